/* The direct patcher's core in C: agent/weaving/patch.py's _core_python, byte for byte.
 *
 * core(code, exceptions, lines, prologue, epilogue, tail) -> (code, exceptions, lines)
 *
 * Given a 3.11+ code object's co_code, co_exceptiontable and co_linetable, and the
 * already assembled entry code, return epilogue and handler, it returns the woven
 * three: the entry code after RESUME (or where the first exception range starts, when
 * that is at or before RESUME), each return preceded by the epilogue (RETURN_CONST k
 * becomes LOAD_CONST k + epilogue + RETURN_VALUE), relative jumps re-aimed (growing an
 * EXTENDED_ARG where they must), every exception range moved and one item deeper, our
 * catch-all range over what no range and no return covers, the handler at the end,
 * and the location table with the inserted units ("no location" for the entry code
 * and the handler, the return's own location for an epilogue). Code it does not
 * handle raises ValueError; the caller then weaves with the bytecode library.
 *
 * setup(caches, kinds, EXTENDED_ARG, RESUME, RETURN_VALUE, RETURN_CONST, LOAD_CONST,
 * resume_mask) gives it this interpreter's opcodes once (patch.py's _native does):
 * caches and kinds are 256 bytes each, kinds 1 a forward jump, 5 a backward one, 2
 * RETURN_VALUE, 3 RETURN_CONST, 4 RESUME or (3.12) YIELD_VALUE.
 *
 * The tests weave whole stdlib packages with this core, the Python core and the
 * bytecode library, and require the same instructions, locations and handlers.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

enum { K_NONE = 0, K_FORWARD = 1, K_RETURN = 2, K_RETURN_CONST = 3, K_OTHER = 4, K_BACKWARD = 5 };

static unsigned char caches[256];
static unsigned char kinds[256];
static int op_ext = -1, op_resume = -1, op_return_value = -1, op_return_const = -1;
static int op_load_const = -1;
static long resume_mask = 0;
static int configured = 0;

typedef struct {
    Py_ssize_t start;   /* first unit, prefixes included */
    Py_ssize_t old_len; /* units */
    Py_ssize_t new_len; /* units */
    Py_ssize_t target;  /* jumps: the old unit aimed at */
    long arg;           /* the argument to write (jumps: the distance once known) */
    int op, kind, prefixes;
} Edit;

typedef struct {
    unsigned char *data;
    Py_ssize_t len, cap;
} Buf;

static int
buf_reserve(Buf *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + more) {
        cap *= 2;
    }
    unsigned char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int
buf_put(Buf *b, unsigned char byte)
{
    if (buf_reserve(b, 1) < 0) {
        return -1;
    }
    b->data[b->len++] = byte;
    return 0;
}

static int
buf_write(Buf *b, const unsigned char *data, Py_ssize_t n)
{
    if (n <= 0) {
        return 0;
    }
    if (buf_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, data, (size_t)n);
    b->len += n;
    return 0;
}

static int
prefixes_for(long arg)
{
    return arg >= (1L << 24) ? 3 : arg >= (1L << 16) ? 2 : arg >= (1L << 8) ? 1 : 0;
}

/* Units of op with arg, at least `prefixes` EXTENDED_ARGs. */
static Py_ssize_t
instr_units(int op, long arg, int prefixes)
{
    int ext = prefixes_for(arg);
    if (prefixes > ext) {
        ext = prefixes;
    }
    return ext + 1 + caches[op];
}

static int
put_instr(Buf *b, int op, long arg, int prefixes)
{
    int ext = prefixes_for(arg);
    if (prefixes > ext) {
        ext = prefixes;
    }
    for (int shift = ext; shift > 0; shift--) {
        if (buf_put(b, (unsigned char)op_ext) < 0
            || buf_put(b, (unsigned char)((arg >> (8 * shift)) & 0xFF)) < 0) {
            return -1;
        }
    }
    if (buf_put(b, (unsigned char)op) < 0 || buf_put(b, (unsigned char)(arg & 0xFF)) < 0) {
        return -1;
    }
    for (int i = 0; i < caches[op]; i++) {
        if (buf_put(b, 0) < 0 || buf_put(b, 0) < 0) {
            return -1;
        }
    }
    return 0;
}

/* -- exception table -------------------------------------------------------------- */

typedef struct {
    Py_ssize_t start, end, target;
    long depth;
    int lasti;
} Range;

static int
read_varint_be(const unsigned char *p, Py_ssize_t n, Py_ssize_t *pos, Py_ssize_t *out)
{
    if (*pos >= n) {
        return -1;
    }
    unsigned char byte = p[(*pos)++];
    Py_ssize_t value = byte & 0x3F;
    while (byte & 0x40) {
        if (*pos >= n || value > (PY_SSIZE_T_MAX >> 7)) {
            return -1;
        }
        byte = p[(*pos)++];
        value = (value << 6) | (byte & 0x3F);
    }
    *out = value;
    return 0;
}

static int
write_varint_be(Buf *b, Py_ssize_t value, int first)
{
    unsigned char chunks[12];
    int n = 0;
    chunks[n++] = (unsigned char)(value & 0x3F);
    value >>= 6;
    while (value) {
        chunks[n++] = (unsigned char)(0x40 | (value & 0x3F));
        value >>= 6;
    }
    for (int i = n - 1; i >= 0; i--) {
        unsigned char byte = chunks[i];
        if (first && i == n - 1) {
            byte |= 0x80;
        }
        if (buf_put(b, byte) < 0) {
            return -1;
        }
    }
    return 0;
}

static int
compare_ranges(const void *a, const void *b)
{
    const Range *x = a, *y = b;
    if (x->start != y->start) {
        return x->start < y->start ? -1 : 1;
    }
    if (x->end != y->end) {
        return x->end < y->end ? -1 : 1;
    }
    return 0;
}

/* -- location table ----------------------------------------------------------------- */

/* The byte length of the location entry at p[0..n). */
static Py_ssize_t
location_entry_size(const unsigned char *p, Py_ssize_t n)
{
    int code = (p[0] >> 3) & 15;
    Py_ssize_t pos = 1;
    if (code < 10) {
        pos += 1;
    }
    else if (code < 13) {
        pos += 2;
    }
    else if (code != 15) {
        int varints = code == 13 ? 1 : 4;
        for (int i = 0; i < varints; i++) {
            while (pos < n && (p[pos] & 0x40)) {
                pos++;
            }
            pos++;
        }
    }
    return pos <= n ? pos : -1;
}

static int
no_location(Buf *b, Py_ssize_t units)
{
    while (units > 0) {
        Py_ssize_t piece = units > 8 ? 8 : units;
        if (buf_put(b, (unsigned char)(0x80 | (15 << 3) | (piece - 1))) < 0) {
            return -1;
        }
        units -= piece;
    }
    return 0;
}

/* entry's location over `units` code units; `first`: where its own line delta applies. */
static int
emit_location(Buf *b, const unsigned char *entry, Py_ssize_t size, Py_ssize_t units, int first)
{
    if (units <= 0) {
        return 0;
    }
    if (first) {
        Py_ssize_t piece = units > 8 ? 8 : units;
        if (buf_put(b, (unsigned char)((entry[0] & 0xF8) | (piece - 1))) < 0
            || buf_write(b, entry + 1, size - 1) < 0) {
            return -1;
        }
        units -= piece;
        if (!units) {
            return 0;
        }
    }
    /* continued: the same location, a line delta of 0 */
    int code = (entry[0] >> 3) & 15;
    int head = code;
    unsigned char zero = 0;
    const unsigned char *body = entry + 1;
    Py_ssize_t body_size = size - 1;
    const unsigned char *rest = NULL;
    Py_ssize_t rest_size = 0;
    if (code >= 10 && code < 13) {
        head = 10;
    }
    else if (code == 13) {
        body = &zero;
        body_size = 1;
    }
    else if (code == 14) {
        Py_ssize_t pos = 1;
        while (pos < size && (entry[pos] & 0x40)) {
            pos++;
        }
        pos++;
        body = &zero;
        body_size = 1;
        rest = entry + pos;
        rest_size = size - pos;
    }
    while (units > 0) {
        Py_ssize_t piece = units > 8 ? 8 : units;
        if (buf_put(b, (unsigned char)(0x80 | (head << 3) | (piece - 1))) < 0
            || buf_write(b, body, body_size) < 0 || buf_write(b, rest, rest_size) < 0) {
            return -1;
        }
        units -= piece;
    }
    return 0;
}

/* -- the patch ---------------------------------------------------------------------- */

typedef struct {
    const Edit *edits;
    Py_ssize_t count;
    const Py_ssize_t *shift; /* shift[i]: growth (units) of edits 0..i-1 */
    Py_ssize_t body;         /* unit */
    Py_ssize_t prologue;     /* units */
} Layout;

/* New unit of the instruction (group) that starts at old unit `unit`. */
static Py_ssize_t
moved(const Layout *l, Py_ssize_t unit)
{
    Py_ssize_t lo = 0, hi = l->count;
    while (lo < hi) { /* edits strictly before unit */
        Py_ssize_t mid = (lo + hi) / 2;
        if (l->edits[mid].start < unit) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return unit + l->shift[lo] + (unit >= l->body ? l->prologue : 0);
}

static PyObject *
fail(const char *message)
{
    PyErr_SetString(PyExc_ValueError, message);
    return NULL;
}

static PyObject *
patch_core(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!configured) {
        return fail("setup() was not called");
    }
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "core() takes 6 bytes arguments");
        return NULL;
    }
    const unsigned char *data[6];
    Py_ssize_t sizes[6];
    for (int i = 0; i < 6; i++) {
        if (!PyBytes_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "core() takes 6 bytes arguments");
            return NULL;
        }
        data[i] = (const unsigned char *)PyBytes_AS_STRING(args[i]);
        sizes[i] = PyBytes_GET_SIZE(args[i]);
    }
    const unsigned char *raw = data[0], *exc = data[1], *lines = data[2];
    const unsigned char *prologue = data[3], *epilogue = data[4], *tail = data[5];
    Py_ssize_t size = sizes[0], exc_size = sizes[1], lines_size = sizes[2];
    Py_ssize_t prologue_size = sizes[3], epilogue_size = sizes[4], tail_size = sizes[5];
    if ((size | prologue_size | epilogue_size | tail_size) & 1) {
        return fail("code of an odd length");
    }
    Py_ssize_t units = size / 2;

    PyObject *result = NULL;
    unsigned char *is_start = PyMem_Calloc((size_t)units + 1, 1);
    Edit *edits = PyMem_Malloc(sizeof(Edit) * (size_t)(units + 1));
    Py_ssize_t *shift = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(units + 2));
    Range *ranges = NULL;
    Buf code = {0}, table = {0}, locations = {0};
    if (is_start == NULL || edits == NULL || shift == NULL) {
        PyErr_NoMemory();
        goto done;
    }

    /* One walk over the instructions. */
    Py_ssize_t count = 0, resume = -1, u = 0, ext_start = -1;
    long ext = 0;
    while (u < units) {
        int op = raw[2 * u];
        long a = raw[2 * u + 1];
        if (op == op_ext) {
            if (ext_start < 0) {
                ext_start = u;
            }
            if (u - ext_start >= 3) {
                fail("more than three EXTENDED_ARG prefixes");
                goto done;
            }
            ext = (ext | a) << 8;
            u++;
            continue;
        }
        Py_ssize_t start = ext_start >= 0 ? ext_start : u;
        long arg = ext | a;
        int prefixes = (int)(u - start);
        ext = 0;
        ext_start = -1;
        is_start[start] = 1;
        Py_ssize_t after = u + 1 + caches[op];
        if (after > units) {
            fail("the code ends inside an instruction");
            goto done;
        }
        int kind = kinds[op];
        if (kind) {
            Edit *e = &edits[count];
            e->start = start;
            e->old_len = after - start;
            e->new_len = e->old_len;
            e->op = op;
            e->kind = kind;
            e->prefixes = prefixes;
            e->arg = arg;
            e->target = -1;
            int keep = 1;
            if (kind == K_FORWARD) {
                e->target = after + arg;
            }
            else if (kind == K_BACKWARD) {
                e->target = after - arg;
            }
            else if (kind == K_RETURN) {
                e->new_len = e->old_len + epilogue_size / 2;
            }
            else if (kind == K_RETURN_CONST) {
                e->new_len = instr_units(op_load_const, arg, prefixes) + epilogue_size / 2
                             + instr_units(op_return_value, 0, 0);
            }
            else if (op == op_resume) {
                if (resume < 0) {
                    resume = u;
                }
                keep = (arg & resume_mask) != 0;
                e->arg = arg & ~resume_mask;
            }
            else { /* 3.12's YIELD_VALUE: its handler depth, one more with the token */
                keep = arg == 1;
                e->arg = 2;
            }
            if (keep) {
                count++;
            }
        }
        u = after;
    }
    if (ext_start >= 0) {
        fail("the code ends inside an instruction");
        goto done;
    }
    if (resume < 0) {
        fail("no RESUME");
        goto done;
    }
    is_start[units] = 1;

    /* The exception table. */
    Py_ssize_t nranges = 0, cap = 8;
    ranges = PyMem_Malloc(sizeof(Range) * (size_t)cap);
    if (ranges == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t pos = 0;
    while (pos < exc_size) {
        Py_ssize_t start, length, target, depth_lasti;
        if (read_varint_be(exc, exc_size, &pos, &start) < 0
            || read_varint_be(exc, exc_size, &pos, &length) < 0
            || read_varint_be(exc, exc_size, &pos, &target) < 0
            || read_varint_be(exc, exc_size, &pos, &depth_lasti) < 0) {
            fail("a truncated exception table");
            goto done;
        }
        if (start + length > units || target >= units || !is_start[start]
            || !is_start[start + length] || !is_start[target]) {
            fail("an exception range does not fall on instructions");
            goto done;
        }
        if (nranges + 1 >= cap) {
            cap *= 2;
            Range *more = PyMem_Realloc(ranges, sizeof(Range) * (size_t)cap);
            if (more == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            ranges = more;
        }
        ranges[nranges].start = start;
        ranges[nranges].end = start + length;
        ranges[nranges].target = target;
        ranges[nranges].depth = (long)(depth_lasti >> 1);
        ranges[nranges].lasti = (int)(depth_lasti & 1);
        nranges++;
    }

    /* Where the entry goes: after RESUME, or where the first range starts when that is
       at RESUME (its prefixes included) or before it. */
    Py_ssize_t resume_start = resume;
    while (resume_start && raw[2 * (resume_start - 1)] == op_ext) {
        resume_start--;
    }
    Py_ssize_t body = resume + 1;
    if (nranges && ranges[0].start <= resume_start) {
        body = ranges[0].start;
    }
    for (Py_ssize_t i = 0; i < nranges; i++) {
        if (ranges[i].start < body) {
            fail("an exception range starts before the body");
            goto done;
        }
    }

    /* Jump sizes: iterate, insertions only grow distances. */
    Layout layout = {edits, count, shift, body, prologue_size / 2};
    int settled = 0;
    for (int round = 0; round < 8 && !settled; round++) {
        Py_ssize_t total = 0;
        for (Py_ssize_t i = 0; i < count; i++) {
            shift[i] = total;
            total += edits[i].new_len - edits[i].old_len;
        }
        shift[count] = total;
        settled = 1;
        for (Py_ssize_t i = 0; i < count; i++) {
            Edit *e = &edits[i];
            if (e->kind != K_FORWARD && e->kind != K_BACKWARD) {
                continue;
            }
            if (e->target < 0 || e->target >= units || !is_start[e->target]) {
                fail("a jump aims inside an instruction");
                goto done;
            }
            Py_ssize_t after = moved(&layout, e->start) + e->new_len;
            Py_ssize_t there = moved(&layout, e->target);
            Py_ssize_t distance = e->kind == K_BACKWARD ? after - there : there - after;
            if (distance < 0) {
                fail("a jump changed direction");
                goto done;
            }
            e->arg = (long)distance;
            Py_ssize_t length = instr_units(e->op, e->arg, e->prefixes);
            if (length != e->new_len) {
                e->prefixes = (int)(length - 1 - caches[e->op]);
                e->new_len = length;
                settled = 0;
            }
        }
    }
    if (!settled) {
        fail("jump sizes did not settle");
        goto done;
    }

    /* The code. */
    Py_ssize_t cursor = 0;
    int placed = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const Edit *e = &edits[i];
        if (!placed && e->start >= body) {
            if (buf_write(&code, raw + 2 * cursor, 2 * (body - cursor)) < 0
                || buf_write(&code, prologue, prologue_size) < 0) {
                goto done;
            }
            cursor = body;
            placed = 1;
        }
        if (buf_write(&code, raw + 2 * cursor, 2 * (e->start - cursor)) < 0) {
            goto done;
        }
        int ok = 0;
        switch (e->kind) {
        case K_RETURN:
            ok = buf_write(&code, epilogue, epilogue_size) == 0
                 && buf_write(&code, raw + 2 * e->start, 2 * e->old_len) == 0;
            break;
        case K_RETURN_CONST:
            ok = put_instr(&code, op_load_const, e->arg, e->prefixes) == 0
                 && buf_write(&code, epilogue, epilogue_size) == 0
                 && put_instr(&code, op_return_value, 0, 0) == 0;
            break;
        default:
            ok = put_instr(&code, e->op, e->arg, e->prefixes) == 0;
        }
        if (!ok) {
            goto done;
        }
        cursor = e->start + e->old_len;
    }
    if (!placed) {
        if (buf_write(&code, raw + 2 * cursor, 2 * (body - cursor)) < 0
            || buf_write(&code, prologue, prologue_size) < 0) {
            goto done;
        }
        cursor = body;
    }
    if (buf_write(&code, raw + 2 * cursor, 2 * (units - cursor)) < 0) {
        goto done;
    }
    Py_ssize_t handler_at = code.len / 2;
    if (buf_write(&code, tail, tail_size) < 0) {
        goto done;
    }

    /* The exception table: own ranges moved and one deeper; ours in the gaps between
       them and the return groups (epilogue + return), from the body to the handler. */
    {
        Py_ssize_t returns = 0;
        for (Py_ssize_t i = 0; i < count; i++) {
            returns += edits[i].kind == K_RETURN || edits[i].kind == K_RETURN_CONST;
        }
        Py_ssize_t nholes = nranges + returns;
        Range *all = PyMem_Malloc(sizeof(Range) * (size_t)(2 * nholes + 2 * nranges + 2));
        if (all == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        Range *holes = all;                /* nholes */
        Range *out = all + nholes;         /* own + ours */
        Py_ssize_t nout = 0, h = 0;
        for (Py_ssize_t i = 0; i < nranges; i++) {
            Range r = ranges[i];
            r.start = moved(&layout, r.start);
            r.end = moved(&layout, r.end);
            r.target = moved(&layout, r.target);
            r.depth += 1;
            out[nout++] = r;
            holes[h++] = r;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            if (edits[i].kind == K_RETURN || edits[i].kind == K_RETURN_CONST) {
                Py_ssize_t at = moved(&layout, edits[i].start);
                holes[h].start = at;
                holes[h].end = at + edits[i].new_len;
                h++;
            }
        }
        qsort(holes, (size_t)h, sizeof(Range), compare_ranges);
        Py_ssize_t from = moved(&layout, body);
        for (Py_ssize_t i = 0; i < h; i++) {
            if (holes[i].start > from) {
                Range r = {from, holes[i].start, handler_at, 1, 1};
                out[nout++] = r;
            }
            if (holes[i].end > from) {
                from = holes[i].end;
            }
        }
        if (handler_at > from) {
            Range r = {from, handler_at, handler_at, 1, 1};
            out[nout++] = r;
        }
        qsort(out, (size_t)nout, sizeof(Range), compare_ranges);
        int ok = 1;
        for (Py_ssize_t i = 0; i < nout && ok; i++) {
            ok = write_varint_be(&table, out[i].start, 1) == 0
                 && write_varint_be(&table, out[i].end - out[i].start, 0) == 0
                 && write_varint_be(&table, out[i].target, 0) == 0
                 && write_varint_be(&table, (out[i].depth << 1) | out[i].lasti, 0) == 0;
        }
        PyMem_Free(all);
        if (!ok) {
            goto done;
        }
    }

    /* The location table: walk its entries; copy those untouched, re-head those that
       grow (an edit starts in them) and split the one holding the body's start. */
    {
        Py_ssize_t lpos = 0, lunit = 0, next_edit = 0, split_done = 0;
        while (lpos < lines_size) {
            Py_ssize_t esize = location_entry_size(lines + lpos, lines_size - lpos);
            if (esize < 0 || !(lines[lpos] & 0x80)) {
                fail("a malformed location table");
                goto done;
            }
            const unsigned char *entry = lines + lpos;
            Py_ssize_t length = (entry[0] & 7) + 1;
            Py_ssize_t grow = 0;
            while (next_edit < count && edits[next_edit].start < lunit + length) {
                if (edits[next_edit].start >= lunit) {
                    grow += edits[next_edit].new_len - edits[next_edit].old_len;
                }
                next_edit++;
            }
            int split = !split_done && body >= lunit && body < lunit + length;
            int ok;
            if (split) {
                Py_ssize_t before = body - lunit;
                split_done = 1;
                ok = emit_location(&locations, entry, esize, before, 1) == 0
                     && no_location(&locations, prologue_size / 2) == 0
                     && emit_location(&locations, entry, esize, length - before + grow,
                                      before == 0) == 0;
            }
            else if (grow) {
                ok = emit_location(&locations, entry, esize, length + grow, 1) == 0;
            }
            else {
                ok = buf_write(&locations, entry, esize) == 0;
            }
            if (!ok) {
                goto done;
            }
            lpos += esize;
            lunit += length;
        }
        if (lunit != units) {
            fail("the location table does not cover the code");
            goto done;
        }
        if (!split_done) {
            fail("no location entry covers an edit");
            goto done;
        }
        if (no_location(&locations, tail_size / 2) < 0) {
            goto done;
        }
    }

    /* ("y#" would make None of a buffer never written to: an empty table) */
    result = Py_BuildValue("(NNN)",
                           PyBytes_FromStringAndSize(code.len ? (char *)code.data : "", code.len),
                           PyBytes_FromStringAndSize(table.len ? (char *)table.data : "", table.len),
                           PyBytes_FromStringAndSize(locations.len ? (char *)locations.data : "",
                                                     locations.len));
done:
    PyMem_Free(is_start);
    PyMem_Free(edits);
    PyMem_Free(shift);
    PyMem_Free(ranges);
    PyMem_Free(code.data);
    PyMem_Free(table.data);
    PyMem_Free(locations.data);
    return result;
}

static PyObject *
patch_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])
        || PyBytes_GET_SIZE(args[0]) != 256 || PyBytes_GET_SIZE(args[1]) != 256) {
        PyErr_SetString(PyExc_TypeError,
                        "setup(caches, kinds, EXTENDED_ARG, RESUME, RETURN_VALUE, "
                        "RETURN_CONST, LOAD_CONST, resume_mask): 256-byte tables and ints");
        return NULL;
    }
    long values[6];
    for (int i = 0; i < 6; i++) {
        values[i] = PyLong_AsLong(args[2 + i]);
        if (values[i] == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    memcpy(caches, PyBytes_AS_STRING(args[0]), 256);
    memcpy(kinds, PyBytes_AS_STRING(args[1]), 256);
    op_ext = (int)values[0];
    op_resume = (int)values[1];
    op_return_value = (int)values[2];
    op_return_const = (int)values[3];
    op_load_const = (int)values[4];
    resume_mask = values[5];
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"core", (PyCFunction)(void (*)(void))patch_core, METH_FASTCALL,
     "core(code, exceptions, lines, prologue, epilogue, tail) -> the woven three"},
    {"setup", (PyCFunction)(void (*)(void))patch_setup, METH_FASTCALL,
     "setup(caches, kinds, EXTENDED_ARG, RESUME, RETURN_VALUE, RETURN_CONST, LOAD_CONST, "
     "resume_mask): this interpreter's opcodes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "agent.weaving._patch",
    "The direct patcher's core in C (see agent/weaving/patch.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__patch(void)
{
    return PyModule_Create(&module_def);
}
