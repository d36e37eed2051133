/* The index pass of pytest_ktrace._parse in C: the rows of a trace, one per line.
 *
 * index_rows(text) returns what pytest_ktrace._parse._index_rows_python returns, four lists of the same
 * length, one item per line of ``text`` (a last empty line after the final newline left out):
 *
 *   heads, stamps, names, bodies
 *
 * For a line that _parse._H_LINE matches (an event header of the shape the reference parser provably reads
 * the same way) they are its three groups and the rest of the line; for any other line None, None, None and
 * the whole line. _H_LINE is
 *
 *   ([^\]\n-]*(?:-(?![0-9])[^\]\n-]*)*-[0-9]+ +(?:\( *[0-9-]+\) +|)\[[0-9]+\] +(?:\S+ +|))
 *   ([0-9]+(?:\.[0-9]+|)): ([^\s:]+):
 *
 * and every part of it matches in exactly one way, which is what makes a scan without backtracking give
 * the regular expression's answer:
 *   - the comm holds no "-<digit>" and no "]": the pid's dash is the first "-<digit>" of the line, with no
 *     "]" before it; pid digits, blanks and the cpu column are greedy runs whose shorter forms cannot be
 *     followed by what comes next;
 *   - the optional tgid "( <digits or dashes>) " is tried first; if it fails, "[" is needed where "(" is;
 *   - the optional flags column is tried first: "\S+ +" can only end at the end of the run of non-blanks
 *     (a shorter run is followed by a non-blank, not a space); if the timestamp, name or colons do not
 *     follow it, the timestamp is tried where the flags would have started;
 *   - the timestamp's fraction is tried first; without it ": " would have to follow the integer part, where
 *     the "." is; the name is the run of characters that are neither blanks (str.isspace) nor ":".
 * The differential tests compare the two on generated and mutated lines.
 *
 * Names and heads repeat from line to line: a small cache of recent ones gives the same str object again
 * (fewer allocations, and a hash computed once).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define CACHE_SIZE 16

typedef struct {
    PyObject *items[CACHE_SIZE];
    int next;
} RecentStrings;

static int is_digit(Py_UCS4 c) { return c >= '0' && c <= '9'; }

/* The substring [start, end) of text, the cached object when one equal to it is cached. New reference. */
static PyObject *
recent_substring(RecentStrings *cache, PyObject *text, int kind, const void *data, Py_ssize_t start,
                 Py_ssize_t end)
{
    Py_ssize_t len = end - start;
    for (int i = 0; i < CACHE_SIZE; i++) {
        PyObject *s = cache->items[i];
        if (s == NULL || PyUnicode_GET_LENGTH(s) != len) {
            continue;
        }
        int s_kind = PyUnicode_KIND(s);
        const void *s_data = PyUnicode_DATA(s);
        Py_ssize_t k = 0;
        if (s_kind == kind) {
            if (memcmp(s_data, (const char *)data + start * kind, (size_t)(len * kind)) == 0) {
                k = len;
            }
        }
        else {
            while (k < len && PyUnicode_READ(s_kind, s_data, k) == PyUnicode_READ(kind, data, start + k)) {
                k++;
            }
        }
        if (k == len) {
            Py_INCREF(s);
            return s;
        }
    }
    PyObject *s = PyUnicode_Substring(text, start, end);
    if (s == NULL) {
        return NULL;
    }
    Py_XDECREF(cache->items[cache->next]);
    Py_INCREF(s);
    cache->items[cache->next] = s;
    cache->next = (cache->next + 1) % CACHE_SIZE;
    return s;
}

static void
clear_recent(RecentStrings *cache)
{
    for (int i = 0; i < CACHE_SIZE; i++) {
        Py_CLEAR(cache->items[i]);
    }
}

/* "<ts>: <name>:" at r: its timestamp end, name bounds and the end of the match, or 0 if it does not fit. */
static int
stamp_and_name(int kind, const void *data, Py_ssize_t r, Py_ssize_t n, Py_ssize_t *ts_end,
               Py_ssize_t *name_start, Py_ssize_t *name_end)
{
    Py_ssize_t d = r;
    while (d < n && is_digit(PyUnicode_READ(kind, data, d))) {
        d++;
    }
    if (d == r) {
        return 0;
    }
    if (d < n && PyUnicode_READ(kind, data, d) == '.') {
        Py_ssize_t e = d + 1;
        while (e < n && is_digit(PyUnicode_READ(kind, data, e))) {
            e++;
        }
        if (e == d + 1) {
            return 0; /* "<digits>." without a fraction: ": " cannot follow the digits either */
        }
        d = e;
    }
    if (d + 1 >= n || PyUnicode_READ(kind, data, d) != ':' || PyUnicode_READ(kind, data, d + 1) != ' ') {
        return 0;
    }
    Py_ssize_t s = d + 2, e = s;
    while (e < n) {
        Py_UCS4 c = PyUnicode_READ(kind, data, e);
        if (c == ':' || Py_UNICODE_ISSPACE(c)) {
            break;
        }
        e++;
    }
    if (e == s || e >= n || PyUnicode_READ(kind, data, e) != ':') {
        return 0;
    }
    *ts_end = d;
    *name_start = s;
    *name_end = e;
    return 1;
}

/* Whether the line [a, n) is an H line; if so its head end (= timestamp start), timestamp end, name bounds
 * and match end. */
static int
match_header(int kind, const void *data, Py_ssize_t a, Py_ssize_t n, Py_ssize_t *head_end, Py_ssize_t *ts_end,
             Py_ssize_t *name_start, Py_ssize_t *name_end)
{
    Py_ssize_t i = a;
    /* comm, then the pid's dash: the first "-<digit>", no "]" before it */
    for (;;) {
        while (i < n) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (c == ']' || c == '-') {
                break;
            }
            i++;
        }
        if (i >= n || PyUnicode_READ(kind, data, i) == ']') {
            return 0;
        }
        if (i + 1 < n && is_digit(PyUnicode_READ(kind, data, i + 1))) {
            break;
        }
        i++;
    }
    Py_ssize_t j = i + 1;
    while (j < n && is_digit(PyUnicode_READ(kind, data, j))) {
        j++;
    }
    if (j >= n || PyUnicode_READ(kind, data, j) != ' ') {
        return 0;
    }
    while (j < n && PyUnicode_READ(kind, data, j) == ' ') {
        j++;
    }
    if (j < n && PyUnicode_READ(kind, data, j) == '(') { /* the tgid column */
        Py_ssize_t k = j + 1;
        while (k < n && PyUnicode_READ(kind, data, k) == ' ') {
            k++;
        }
        Py_ssize_t s = k;
        while (k < n) {
            Py_UCS4 c = PyUnicode_READ(kind, data, k);
            if (!is_digit(c) && c != '-') {
                break;
            }
            k++;
        }
        if (k == s || k + 1 >= n || PyUnicode_READ(kind, data, k) != ')' || PyUnicode_READ(kind, data, k + 1) != ' ') {
            return 0; /* without it "[" would be needed where "(" is */
        }
        j = k + 1;
        while (j < n && PyUnicode_READ(kind, data, j) == ' ') {
            j++;
        }
    }
    if (j >= n || PyUnicode_READ(kind, data, j) != '[') {
        return 0;
    }
    Py_ssize_t s = ++j;
    while (j < n && is_digit(PyUnicode_READ(kind, data, j))) {
        j++;
    }
    if (j == s || j >= n || PyUnicode_READ(kind, data, j) != ']') {
        return 0;
    }
    j++;
    if (j >= n || PyUnicode_READ(kind, data, j) != ' ') {
        return 0;
    }
    while (j < n && PyUnicode_READ(kind, data, j) == ' ') {
        j++;
    }
    /* the flags column, tried first */
    Py_ssize_t q = j;
    while (q < n && !Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, q))) {
        q++;
    }
    if (q > j && q < n && PyUnicode_READ(kind, data, q) == ' ') {
        Py_ssize_t r = q;
        while (r < n && PyUnicode_READ(kind, data, r) == ' ') {
            r++;
        }
        if (stamp_and_name(kind, data, r, n, ts_end, name_start, name_end)) {
            *head_end = r;
            return 1;
        }
    }
    if (stamp_and_name(kind, data, j, n, ts_end, name_start, name_end)) {
        *head_end = j;
        return 1;
    }
    return 0;
}

static int
append_new(PyObject *list, PyObject *item)
{
    if (item == NULL) {
        return -1;
    }
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

static PyObject *
index_rows(PyObject *module, PyObject *text)
{
    (void)module;
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "trace text must be str, got %.100s", Py_TYPE(text)->tp_name);
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0) {
        return NULL;
    }
#endif
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    PyObject *heads = PyList_New(0), *stamps = PyList_New(0), *names = PyList_New(0), *bodies = PyList_New(0);
    RecentStrings recent_names = {{NULL}, 0}, recent_heads = {{NULL}, 0};
    if (heads == NULL || stamps == NULL || names == NULL || bodies == NULL) {
        goto error;
    }
    Py_ssize_t a = 0;
    for (;;) {
        Py_ssize_t n = PyUnicode_FindChar(text, '\n', a, length, 1);
        if (n == -2) {
            goto error;
        }
        int last = n < 0;
        if (last) {
            n = length;
        }
        Py_ssize_t head_end, ts_end, name_start, name_end;
        if (match_header(kind, data, a, n, &head_end, &ts_end, &name_start, &name_end)) {
            if (append_new(heads, recent_substring(&recent_heads, text, kind, data, a, head_end)) < 0
                || append_new(stamps, PyUnicode_Substring(text, head_end, ts_end)) < 0
                || append_new(names, recent_substring(&recent_names, text, kind, data, name_start, name_end)) < 0
                || append_new(bodies, PyUnicode_Substring(text, name_end + 1, n)) < 0) {
                goto error;
            }
        }
        else if (!(last && a == n)) { /* no row for an empty last line */
            if (PyList_Append(heads, Py_None) < 0 || PyList_Append(stamps, Py_None) < 0
                || PyList_Append(names, Py_None) < 0 || append_new(bodies, PyUnicode_Substring(text, a, n)) < 0) {
                goto error;
            }
        }
        if (last) {
            break;
        }
        a = n + 1;
    }
    clear_recent(&recent_names);
    clear_recent(&recent_heads);
    return Py_BuildValue("(NNNN)", heads, stamps, names, bodies);
error:
    clear_recent(&recent_names);
    clear_recent(&recent_heads);
    Py_XDECREF(heads);
    Py_XDECREF(stamps);
    Py_XDECREF(names);
    Py_XDECREF(bodies);
    return NULL;
}

static PyMethodDef methods[] = {
    {"index_rows", index_rows, METH_O,
     "index_rows(text) -> (heads, stamps, names, bodies): the rows of the index pass, one per line."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_speedups", "The index pass of the trace parser, in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module_def);
}
