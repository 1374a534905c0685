/* twinweave's timing accelerator: the clock reads and aggregation of timing-mode probes in C.
 *
 * Owns what a woven function in timing mode does on each call when this extension
 * is built: read a clock at entry and at exit and fold the duration into per-join-
 * point statistics (count, failed, total, min, max and a log-linear histogram),
 * with no Python object allocated per call. It does not decide what is woven
 * (agent.weaving) nor turn statistics into reports (agent.stats, agent.plugins).
 * agent/speedups.py is its Python face and fallback switch.
 *
 * Theory of operation.
 * - Clock: the time-stamp counter (rdtsc) where the kernel itself trusts it as its
 *   clocksource (agent/speedups.py decides and calls use_tsc()), else
 *   CLOCK_MONOTONIC. Ticks become nanoseconds in Python, from a calibration over
 *   the whole run (ticks_and_ns()).
 * - Token: enter() keeps the start time in a per-thread stack and returns the
 *   slot's index, a small int that CPython never allocates. Calls of ordinary
 *   functions nest strictly per thread, so the stack is balanced; an exit resets
 *   the depth to its own slot, so a missed exit cannot shift later ones.
 *   Generators and coroutines interleave, so for them enter_raw() returns the
 *   start time itself (offset past the slot range) and nothing is stacked.
 * - Aggregation runs under the GIL, like every C method call; take() hands the
 *   counters over and resets them.
 * - Nothing here raises into the caller's code: bad tokens are ignored.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define TW_HAVE_TSC 1
#else
#define TW_HAVE_TSC 0
#endif

#define SLOTS 256           /* per-thread start-time slots; deeper calls use raw tokens */
#define MANTISSA_BITS 6     /* histogram: 64 buckets per power of two, as agent.stats */
#define MAX_SHIFT 48        /* durations up to 2**55 ticks; longer ones share the last bucket */
#define NBUCKETS (((MAX_SHIFT + 1) << MANTISSA_BITS) + (1 << (MANTISSA_BITS + 1)))

static int use_tsc_clock = 0;
static __thread uint64_t slots[SLOTS];
static __thread unsigned depth;

static inline uint64_t
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t
now(void)
{
#if TW_HAVE_TSC
    if (use_tsc_clock) {
        return __rdtsc();
    }
#endif
    return monotonic_ns();
}

static inline unsigned
bucket_of(uint64_t ticks)
{
    int bits = ticks ? 64 - __builtin_clzll(ticks) : 0;
    int shift = bits - MANTISSA_BITS - 1;
    if (shift <= 0) {
        return (unsigned)ticks;
    }
    if (shift > MAX_SHIFT) {
        return NBUCKETS - 1;
    }
    return ((unsigned)shift << MANTISSA_BITS) + (unsigned)(ticks >> shift);
}

/* -- Recorder: the statistics of one join point ------------------------------------ */

typedef struct {
    PyObject_HEAD
    uint64_t count[2];  /* [0] normal exits, [1] failed */
    uint64_t total[2];
    uint64_t min, max;  /* over all calls since the last take() */
    uint32_t *hist;     /* NBUCKETS counters, allocated at the first call */
} Recorder;

static void
record(Recorder *self, int failed, uint64_t start)
{
    uint64_t end = now();
    uint64_t d = end > start ? end - start : 0;
    if (self->count[0] + self->count[1] == 0 || d < self->min) {
        self->min = d;
    }
    if (d > self->max) {
        self->max = d;
    }
    self->count[failed] += 1;
    self->total[failed] += d;
    if (self->hist == NULL) {
        self->hist = PyMem_Calloc(NBUCKETS, sizeof(uint32_t));
        if (self->hist == NULL) {
            return;  /* no memory for the histogram: percentiles degrade, counts stay */
        }
    }
    self->hist[bucket_of(d)] += 1;
}

/* Start time of a token from enter()/enter_raw(); 0 when the token is not one. */
static inline int
start_of(PyObject *token, uint64_t *start)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(token);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (v < SLOTS) {
        *start = slots[v];
        depth = (unsigned)v;
    }
    else {
        *start = (uint64_t)v - SLOTS;
    }
    return 1;
}

static PyObject *
Recorder_leave(Recorder *self, PyObject *token)
{
    uint64_t start;
    if (start_of(token, &start)) {
        record(self, 0, start);
    }
    Py_RETURN_NONE;
}

static PyObject *
Recorder_fail(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t start;
    int failed = 1;
    if (nargs < 1 || !start_of(args[0], &start)) {
        Py_RETURN_NONE;
    }
    if (nargs >= 2) {
        failed = !PyErr_GivenExceptionMatches(args[1], PyExc_GeneratorExit);
    }
    else {
        /* 3.9/3.10 handlers: the exception being handled is the current one. */
        PyObject *type, *value, *tb;
        PyErr_GetExcInfo(&type, &value, &tb);
        if (type != NULL) {
            failed = !PyErr_GivenExceptionMatches(type, PyExc_GeneratorExit);
        }
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    record(self, failed, start);
    Py_RETURN_NONE;
}

static PyObject *
Recorder_take(Recorder *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *buckets = PyList_New(0);
    if (buckets == NULL) {
        return NULL;
    }
    if (self->hist != NULL) {
        for (unsigned i = 0; i < NBUCKETS; i++) {
            if (self->hist[i] == 0) {
                continue;
            }
            PyObject *pair = Py_BuildValue("(IK)", i, (unsigned long long)self->hist[i]);
            if (pair == NULL || PyList_Append(buckets, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(buckets);
                return NULL;
            }
            Py_DECREF(pair);
        }
        memset(self->hist, 0, NBUCKETS * sizeof(uint32_t));
    }
    PyObject *result = Py_BuildValue(
        "(KKKKKKN)", (unsigned long long)self->count[0], (unsigned long long)self->count[1],
        (unsigned long long)self->total[0], (unsigned long long)self->total[1],
        (unsigned long long)self->min, (unsigned long long)self->max, buckets);
    if (result == NULL) {
        return NULL;
    }
    self->count[0] = self->count[1] = 0;
    self->total[0] = self->total[1] = 0;
    self->min = self->max = 0;
    return result;
}

static void
Recorder_dealloc(Recorder *self)
{
    PyMem_Free(self->hist);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Recorder_methods[] = {
    {"leave", (PyCFunction)Recorder_leave, METH_O,
     "leave(token): a call that started with enter()/enter_raw() returned."},
    {"fail", (PyCFunction)(void (*)(void))Recorder_fail, METH_FASTCALL,
     "fail(token[, exc]): it raised exc (default: the exception being handled); "
     "GeneratorExit counts as a normal exit."},
    {"take", (PyCFunction)Recorder_take, METH_NOARGS,
     "take() -> (ok, failed, ok_ticks, failed_ticks, min, max, [(bucket, count), ...]); "
     "resets the counters."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent._speedups.Recorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Timing statistics of one join point, kept in C.",
    .tp_methods = Recorder_methods,
    .tp_new = PyType_GenericNew,
};

/* -- module functions -------------------------------------------------------------- */

static PyObject *
tw_enter(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t t = now();
    unsigned d = depth;
    if (d < SLOTS) {
        slots[d] = t;
        depth = d + 1;
        return PyLong_FromUnsignedLong(d);  /* a cached small int: nothing allocated */
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(t + SLOTS));
}

static PyObject *
tw_enter_raw(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    return PyLong_FromUnsignedLongLong((unsigned long long)(now() + SLOTS));
}

static PyObject *
tw_use_tsc(PyObject *module, PyObject *flag)
{
    int wanted = PyObject_IsTrue(flag);
    if (wanted < 0) {
        return NULL;
    }
    use_tsc_clock = wanted && TW_HAVE_TSC;
    return PyBool_FromLong(use_tsc_clock);
}

static PyObject *
tw_ticks_and_ns(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    uint64_t ticks = now();
    uint64_t ns = monotonic_ns();
    return Py_BuildValue("(KK)", (unsigned long long)ticks, (unsigned long long)ns);
}

static PyMethodDef module_methods[] = {
    {"enter", (PyCFunction)(void (*)(void))tw_enter, METH_FASTCALL,
     "enter() -> token: start timing a call of an ordinary function."},
    {"enter_raw", (PyCFunction)(void (*)(void))tw_enter_raw, METH_FASTCALL,
     "enter_raw() -> token: start timing a generator or coroutine (no per-thread slot)."},
    {"use_tsc", (PyCFunction)tw_use_tsc, METH_O,
     "use_tsc(flag) -> bool: read the time-stamp counter instead of CLOCK_MONOTONIC."},
    {"ticks_and_ns", (PyCFunction)tw_ticks_and_ns, METH_NOARGS,
     "ticks_and_ns() -> (clock ticks, CLOCK_MONOTONIC ns), read together."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "agent._speedups",
    "C accelerator for timing-mode probes (see agent/speedups.py).", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&RecorderType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&RecorderType);
    if (PyModule_AddObject(module, "Recorder", (PyObject *)&RecorderType) < 0
        || PyModule_AddIntConstant(module, "SLOTS", SLOTS) < 0
        || PyModule_AddIntConstant(module, "MANTISSA_BITS", MANTISSA_BITS) < 0
        || PyModule_AddIntConstant(module, "HAVE_TSC", TW_HAVE_TSC) < 0) {
        Py_DECREF(&RecorderType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
