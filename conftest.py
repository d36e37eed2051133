"""Repository-wide test configuration: real tracefs is required here, never silently replaced."""
