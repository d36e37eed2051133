"""Build hook: compiles the trace parser's C helper (``pytest_ktrace._speedups``) into the wheel.

Without a C compiler or the Python headers the plugin installs all the same: the parser then runs its index
pass in Python (the same results, slower), and the build says so.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        source = Path(self.root, "src", "pytest_ktrace", "_speedups.c")
        built = source.with_name("_speedups" + str(sysconfig.get_config_var("EXT_SUFFIX")))
        compiler = shlex.split(os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc"))
        command = [*compiler, "-shared", "-fPIC", "-O2", "-I", sysconfig.get_paths()["include"], str(source)]
        try:
            subprocess.run([*command, "-o", str(built)], check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            built.unlink(missing_ok=True)  # an editable install would import an old one from the source tree
            detail = getattr(e, "stderr", "") or str(e)
            self.app.display_warning(
                f"pytest-ktrace: the parser's C helper was not built ({detail.strip()[:500]}); "
                "the parser runs in Python alone (the same results, slower)"
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # an editable install imports it from the source tree, where it was built
            build_data["force_include"][str(built)] = f"pytest_ktrace/{built.name}"
