/* twinweave's timing accelerator: the clock reads and aggregation of timing-mode probes in C.
 *
 * Owns what a woven function in timing mode does on each call when this extension
 * is built: read a clock at entry and at exit and fold the duration into per-join-
 * point statistics (count, failed, total, min, max and a log-linear histogram),
 * with no Python object allocated per call; and, from Python 3.12, the sys.monitoring
 * callbacks of the monitoring backend (Monitor, below), which do the same for calls
 * that backend reports, with no Python frame per event. It does not decide what is
 * woven or monitored (agent.weaving) nor turn statistics into reports (agent.stats,
 * agent.plugins). agent/speedups.py is its Python face and fallback switch.
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
#include <limits.h>
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
record_ticks(Recorder *self, int failed, uint64_t d)
{
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

static inline void
record_span(Recorder *self, int failed, uint64_t start, uint64_t end)
{
    record_ticks(self, failed, end > start ? end - start : 0);
}

static inline void
record(Recorder *self, int failed, uint64_t start)
{
    record_span(self, failed, start, now());
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
Recorder_add(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    int failed = 0;
    if (nargs < 1 || !PyLong_Check(args[0])) {
        Py_RETURN_NONE;  /* not a duration: ignored, like a bad token */
    }
    int overflow = 0;
    long long d = PyLong_AsLongLongAndOverflow(args[0], &overflow);
    if (d == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (overflow != 0) {
        d = overflow > 0 ? LLONG_MAX : 0;
    }
    if (nargs >= 2) {
        failed = PyObject_IsTrue(args[1]);
        if (failed < 0) {
            PyErr_Clear();
            failed = 1;
        }
    }
    record_ticks(self, failed, d > 0 ? (uint64_t)d : 0);
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
    {"add", (PyCFunction)(void (*)(void))Recorder_add, METH_FASTCALL,
     "add(ticks[, failed]): a call that lasted ticks (a difference of ticks() values) ended; "
     "a negative duration counts as 0."},
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

/* -- Monitor: sys.monitoring callbacks in C (3.12+) ---------------------------------
 *
 * The callbacks agent/weaving/monitoring.py registers when this extension is built:
 * bound methods of one Monitor, called by the interpreter as C functions, so an event
 * runs no Python frame. What they do is what that module's pure-Python callbacks do
 * (see its docstring); the differences are where the tokens live.
 * - Targets: the registered code objects, found by address in an open-addressing
 *   table (a code object's own hash walks its contents; an address costs nothing).
 * - Ordinary functions in timing mode: the start time goes on a per-thread stack,
 *   tagged with the interpreter frame (its address, which no other running frame
 *   shares) and the target; the end event takes the newest entry with both tags,
 *   wherever it is in the stack (greenlets may interleave calls on one thread). No
 *   frame object is made and nothing is allocated. A call that finds the stack full
 *   goes the slow way below.
 * - Generators, coroutines and steps mode: the token goes into the backend's
 *   `running` dict under the frame object, exactly as the Python callbacks do, so the
 *   sweep finds them. Steps mode calls the probe's enter/leave/fail (Python code, as
 *   it is on every backend).
 * - Clocks: probes with a C recorder get ticks (now()), folded into the recorder;
 *   others get time.perf_counter_ns() values and their durations are appended to the
 *   probe's lists.
 * One Monitor is live at a time (the per-thread stacks are not shared); close()
 * ends it and, through a new generation number, voids every thread's stack lazily.
 * A failure inside a callback never reaches the monitored code: the `failed`
 * callable gets the exception instead.
 */
#if PY_VERSION_HEX >= 0x030C0000 && !defined(Py_GIL_DISABLED)
#define TW_HAVE_MONITOR 1

#define T_STEPS 1
#define T_SUSPENDABLE 2
#define T_SLOW (T_STEPS | T_SUSPENDABLE)
#define MON_DEPTH 256 /* per-thread stack entries; deeper calls use the dict */

typedef struct {
    PyObject *target;        /* the Python-side target this was read from */
    PyObject *code;
    Recorder *recorder;      /* timing mode with the C recorder, else NULL */
    PyObject *ok_append;     /* timing mode without it: durations in ns */
    PyObject *failed_append;
    PyObject *enter, *leave, *fail; /* steps mode: the probe's methods */
    PyObject *param;         /* steps mode: the message-id parameter, or NULL */
    int flags;
} Target;

typedef struct {
    PyObject *code; /* the key (borrowed from its target); NULL: free slot */
    Target *target;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *table;
    size_t capacity, used;
    PyObject *running;  /* frame -> token, shared with the Python side */
    PyObject *yielded;  /* frame -> time of its last yield */
    PyObject *disable;  /* sys.monitoring.DISABLE */
    PyObject *failed;   /* failed(exc): a callback failed */
    PyObject *sweep;    /* sweep(): record generators that ended without an event */
    Py_ssize_t sweep_at;
    Py_ssize_t stacked; /* calls on the per-thread stacks, all threads */
    uint64_t gen;
    int track_yields;
    int live;
    unsigned long long starts, returns, unwinds, yields, misses;
} Monitor;

typedef struct {
    const void *frame;
    const Target *target;
    uint64_t start;
} Entry;

static PyTypeObject MonitorType;
static Monitor *live_monitor = NULL;
static uint64_t monitor_generations = 0;
static __thread Entry mon_stack[MON_DEPTH];
static __thread unsigned mon_depth;
static __thread uint64_t mon_gen;

/* time.perf_counter_ns(), without the call. */
static inline uint64_t
perf_ns(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_PerfCounterRaw(&t);
    return (uint64_t)t;
#else
    return (uint64_t)_PyTime_GetPerfCounter();
#endif
}

static inline uint64_t
clock_of(const Target *t)
{
    return t->recorder != NULL ? now() : perf_ns();
}

/* The interpreter frame running now: the one that emits the event. */
static inline const void *
running_frame(void)
{
#if PY_VERSION_HEX >= 0x030E0000
    return (const void *)PyEval_GetFrame();
#elif PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_Get()->current_frame;
#else
    return PyThreadState_Get()->cframe->current_frame;
#endif
}

static void
callback_failed(Monitor *self)
{
    PyObject *exc = PyErr_GetRaisedException();
    if (self->failed != NULL) {
        PyObject *r = PyObject_CallOneArg(self->failed, exc != NULL ? exc : Py_None);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    Py_XDECREF(exc);
}

/* Remove and return d[key] (a new reference), or NULL when absent; never an error. */
static PyObject *
dict_pop(PyObject *d, PyObject *key)
{
    PyObject *value = NULL;
#if PY_VERSION_HEX >= 0x030D0000
    if (PyDict_Pop(d, key, &value) < 0) {
        PyErr_Clear();
        return NULL;
    }
#else
    value = PyDict_GetItemWithError(d, key);
    if (value == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_INCREF(value);
    if (PyDict_DelItem(d, key) < 0) {
        PyErr_Clear();
    }
#endif
    return value;
}

/* -- the table of targets -- */

static inline size_t
slot_of(const void *code, size_t mask)
{
    uint64_t x = ((uint64_t)(uintptr_t)code >> 4) * 0x9E3779B97F4A7C15ull;
    return (size_t)(x ^ (x >> 32)) & mask;
}

static inline Target *
lookup(const Monitor *self, PyObject *code)
{
    if (self->table == NULL) {
        return NULL;
    }
    size_t mask = self->capacity - 1;
    for (size_t i = slot_of(code, mask);; i = (i + 1) & mask) {
        const Slot *slot = &self->table[i];
        if (slot->code == code) {
            return slot->target;
        }
        if (slot->code == NULL) {
            return NULL;
        }
    }
}

static void
place(Slot *table, size_t capacity, Target *t)
{
    size_t mask = capacity - 1;
    size_t i = slot_of(t->code, mask);
    while (table[i].code != NULL) {
        i = (i + 1) & mask;
    }
    table[i].code = t->code;
    table[i].target = t;
}

static int
insert(Monitor *self, Target *t)
{
    if ((self->used + 1) * 2 > self->capacity) {
        size_t capacity = self->capacity ? self->capacity * 2 : 64;
        Slot *table = PyMem_Calloc(capacity, sizeof(Slot));
        if (table == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i < self->capacity; i++) {
            if (self->table[i].code != NULL) {
                place(table, capacity, self->table[i].target);
            }
        }
        PyMem_Free(self->table);
        self->table = table;
        self->capacity = capacity;
    }
    place(self->table, self->capacity, t);
    self->used++;
    return 0;
}

static void
target_free(Target *t)
{
    Py_XDECREF(t->target);
    Py_XDECREF(t->code);
    Py_XDECREF(t->recorder);
    Py_XDECREF(t->ok_append);
    Py_XDECREF(t->failed_append);
    Py_XDECREF(t->enter);
    Py_XDECREF(t->leave);
    Py_XDECREF(t->fail);
    Py_XDECREF(t->param);
    PyMem_Free(t);
}

static void
drop_targets(Monitor *self)
{
    Slot *table = self->table;
    size_t capacity = self->capacity;
    self->table = NULL;
    self->capacity = self->used = 0;
    for (size_t i = 0; i < capacity; i++) {
        if (table[i].code != NULL) {
            target_free(table[i].target);
        }
    }
    PyMem_Free(table);
}

/* -- the per-thread stack of ordinary calls -- */

static inline int
push(Monitor *self, const void *frame, const Target *t, uint64_t start)
{
    if (mon_gen != self->gen) { /* left by a closed monitor: void */
        mon_gen = self->gen;
        mon_depth = 0;
    }
    unsigned d = mon_depth;
    if (d >= MON_DEPTH) {
        return 0;
    }
    mon_stack[d].frame = frame;
    mon_stack[d].target = t;
    mon_stack[d].start = start;
    mon_depth = d + 1;
    self->stacked++;
    return 1;
}

static inline int
pop(Monitor *self, const void *frame, const Target *t, uint64_t *start)
{
    if (mon_gen != self->gen) {
        return 0;
    }
    unsigned d = mon_depth;
    for (unsigned i = d; i-- > 0;) {
        Entry *e = &mon_stack[i];
        if (e->frame == frame && e->target == t) {
            *start = e->start;
            if (i + 1 < d) {
                memmove(e, e + 1, (d - 1 - i) * sizeof(Entry));
            }
            mon_depth = d - 1;
            self->stacked--;
            return 1;
        }
    }
    return 0;
}

/* -- what the callbacks do -- */

/* A timed call ended: into the recorder (ticks), or its duration (ns) onto a list. */
static void
finish_timed(Monitor *self, const Target *t, int failed, uint64_t start, uint64_t end)
{
    if (t->recorder != NULL) {
        record_span(t->recorder, failed, start, end);
        return;
    }
    PyObject *duration = PyLong_FromUnsignedLongLong(end > start ? end - start : 0);
    if (duration == NULL) {
        callback_failed(self);
        return;
    }
    PyObject *r = PyObject_CallOneArg(failed ? t->failed_append : t->ok_append, duration);
    Py_DECREF(duration);
    if (r == NULL) {
        callback_failed(self);
    }
    Py_XDECREF(r);
}

/* A start the stack does not take: a token under the frame object in `running`. */
static void
start_slow(Monitor *self, const Target *t)
{
    if ((t->flags & T_SUSPENDABLE) && self->sweep != NULL
        && PyDict_GET_SIZE(self->running) >= self->sweep_at) {
        PyObject *r = PyObject_CallNoArgs(self->sweep);
        if (r == NULL) {
            callback_failed(self);
        }
        Py_XDECREF(r);
    }
    PyObject *frame = (PyObject *)PyEval_GetFrame(); /* borrowed; made if needed */
    if (frame == NULL) {
        return;
    }
    PyObject *token;
    if (t->flags & T_STEPS) {
        PyObject *arg = NULL;
        if (t->param != NULL) {
            arg = PyFrame_GetVar((PyFrameObject *)frame, t->param);
            if (arg == NULL) { /* unbound: no message id, as f_locals.get() */
                PyErr_Clear();
            }
        }
        token = PyObject_CallOneArg(t->enter, arg != NULL ? arg : Py_None);
        Py_XDECREF(arg);
    }
    else {
        token = PyLong_FromUnsignedLongLong(clock_of(t));
    }
    if (token == NULL) {
        callback_failed(self);
        return;
    }
    if (PyDict_SetItem(self->running, frame, token) < 0) {
        callback_failed(self);
    }
    Py_DECREF(token);
}

/* A call of t ends: returned (exc NULL) or left by exc. */
static void
end_call(Monitor *self, const Target *t, PyObject *exc)
{
    int failed = exc != NULL && !PyErr_GivenExceptionMatches(exc, PyExc_GeneratorExit);
    uint64_t end = (t->flags & T_STEPS) ? 0 : clock_of(t);
    if (!(t->flags & T_SLOW)) {
        uint64_t start;
        if (pop(self, running_frame(), t, &start)) {
            finish_timed(self, t, failed, start, end);
            return;
        }
        if (PyDict_GET_SIZE(self->running) == 0) {
            return; /* started before it was registered */
        }
    }
    PyObject *frame = (PyObject *)PyEval_GetFrame();
    if (frame == NULL) {
        return;
    }
    PyObject *token = dict_pop(self->running, frame);
    if (token == NULL) {
        return; /* started before it was registered */
    }
    if (self->track_yields && (t->flags & T_SUSPENDABLE)) {
        Py_XDECREF(dict_pop(self->yielded, frame));
    }
    if (t->flags & T_STEPS) {
        PyObject *r;
        if (exc == NULL) {
            r = PyObject_CallOneArg(t->leave, token);
        }
        else {
            PyObject *call[2] = {token, exc};
            r = PyObject_Vectorcall(t->fail, call, 2, NULL);
        }
        if (r == NULL) {
            callback_failed(self);
        }
        Py_XDECREF(r);
    }
    else {
        unsigned long long start = PyLong_AsUnsignedLongLong(token);
        if (start == (unsigned long long)-1 && PyErr_Occurred()) {
            callback_failed(self);
        }
        else {
            finish_timed(self, t, failed, (uint64_t)start, end);
        }
    }
    Py_DECREF(token);
}

static PyObject *
Monitor_py_start(Monitor *self, PyObject *const *args, Py_ssize_t nargs)
{
    Target *t = nargs >= 1 ? lookup(self, args[0]) : NULL;
    if (t == NULL) {
        self->misses++;
        return Py_NewRef(self->disable);
    }
    self->starts++;
    if (!(t->flags & T_SLOW) && push(self, running_frame(), t, clock_of(t))) {
        Py_RETURN_NONE;
    }
    start_slow(self, t);
    Py_RETURN_NONE;
}

static PyObject *
Monitor_py_return(Monitor *self, PyObject *const *args, Py_ssize_t nargs)
{
    Target *t = nargs >= 1 ? lookup(self, args[0]) : NULL;
    if (t == NULL) {
        self->misses++;
        return Py_NewRef(self->disable);
    }
    self->returns++;
    end_call(self, t, NULL);
    Py_RETURN_NONE;
}

static PyObject *
Monitor_py_unwind(Monitor *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* A global event (it cannot be local before 3.15): every frame any exception
       leaves comes here, and DISABLE is not allowed. One table lookup for others. */
    Target *t = nargs >= 3 ? lookup(self, args[0]) : NULL;
    if (t == NULL) {
        Py_RETURN_NONE;
    }
    self->unwinds++;
    end_call(self, t, args[2]);
    Py_RETURN_NONE;
}

static PyObject *
Monitor_py_yield(Monitor *self, PyObject *const *args, Py_ssize_t nargs)
{
    Target *t = nargs >= 1 ? lookup(self, args[0]) : NULL;
    if (t == NULL) {
        self->misses++;
        return Py_NewRef(self->disable);
    }
    self->yields++;
    uint64_t end = clock_of(t);
    PyObject *frame = (PyObject *)PyEval_GetFrame();
    if (frame == NULL) {
        Py_RETURN_NONE;
    }
    int known = PyDict_Contains(self->running, frame);
    if (known > 0) {
        PyObject *when = PyLong_FromUnsignedLongLong(end);
        if (when == NULL || PyDict_SetItem(self->yielded, frame, when) < 0) {
            callback_failed(self);
        }
        Py_XDECREF(when);
    }
    else if (known < 0) {
        callback_failed(self);
    }
    Py_RETURN_NONE;
}

/* -- life cycle -- */

/* New reference to getattr(obj, name), or NULL with an error. */
static PyObject *
attr(PyObject *obj, const char *name)
{
    return PyObject_GetAttrString(obj, name);
}

static int
flag(PyObject *obj, const char *name)
{
    PyObject *value = attr(obj, name);
    if (value == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

static PyObject *
Monitor_add(Monitor *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyCode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "add(code, target): code must be a code object");
        return NULL;
    }
    if (!self->live) {
        PyErr_SetString(PyExc_RuntimeError, "this Monitor is closed");
        return NULL;
    }
    PyObject *code = args[0], *source = args[1];
    if (lookup(self, code) != NULL) {
        Py_RETURN_FALSE; /* the first registration stays */
    }
    Target *t = PyMem_Calloc(1, sizeof(Target));
    if (t == NULL) {
        return PyErr_NoMemory();
    }
    t->target = Py_NewRef(source);
    t->code = Py_NewRef(code);
    int steps = flag(source, "steps");
    int suspendable = flag(source, "suspendable");
    PyObject *recorder = NULL, *probe = NULL, *param = NULL;
    if (steps < 0 || suspendable < 0) {
        goto fail;
    }
    t->flags = (steps ? T_STEPS : 0) | (suspendable ? T_SUSPENDABLE : 0);
    if (steps) {
        if ((probe = attr(source, "probe")) == NULL || (t->enter = attr(probe, "enter")) == NULL
            || (t->leave = attr(probe, "leave")) == NULL
            || (t->fail = attr(probe, "fail")) == NULL || (param = attr(source, "param")) == NULL) {
            goto fail;
        }
        if (param != Py_None) {
            if (!PyUnicode_Check(param)) {
                PyErr_SetString(PyExc_TypeError, "target.param must be a str or None");
                goto fail;
            }
            t->param = Py_NewRef(param);
        }
    }
    else {
        if ((recorder = attr(source, "recorder")) == NULL) {
            goto fail;
        }
        if (recorder != Py_None) {
            if (!Py_IS_TYPE(recorder, &RecorderType)) {
                PyErr_SetString(PyExc_TypeError, "target.recorder must be a Recorder or None");
                goto fail;
            }
            t->recorder = (Recorder *)Py_NewRef(recorder);
        }
        if ((t->ok_append = attr(source, "ok_append")) == NULL
            || (t->failed_append = attr(source, "failed_append")) == NULL) {
            goto fail;
        }
    }
    Py_XDECREF(recorder);
    Py_XDECREF(probe);
    Py_XDECREF(param);
    if (insert(self, t) < 0) {
        target_free(t);
        return NULL;
    }
    Py_RETURN_TRUE;
fail:
    Py_XDECREF(recorder);
    Py_XDECREF(probe);
    Py_XDECREF(param);
    target_free(t);
    return NULL;
}

static void
monitor_close(Monitor *self)
{
    if (self->live) {
        self->live = 0;
        self->gen = ++monitor_generations; /* voids every thread's stack entries */
        if (live_monitor == self) {
            live_monitor = NULL;
        }
    }
    self->stacked = 0;
    drop_targets(self);
}

static PyObject *
Monitor_close(Monitor *self, PyObject *Py_UNUSED(ignored))
{
    monitor_close(self);
    Py_RETURN_NONE;
}

static PyObject *
Monitor_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"running", "yielded", "disable", "failed", "sweep", "track_yields", NULL};
    PyObject *running, *yielded, *disable, *failed, *sweep;
    int track_yields = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!OOO|p:Monitor", names, &PyDict_Type,
                                     &running, &PyDict_Type, &yielded, &disable, &failed, &sweep,
                                     &track_yields)) {
        return NULL;
    }
    if (live_monitor != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "another Monitor is live; close it first");
        return NULL;
    }
    Monitor *self = (Monitor *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->running = Py_NewRef(running);
    self->yielded = Py_NewRef(yielded);
    self->disable = Py_NewRef(disable);
    self->failed = Py_NewRef(failed);
    self->sweep = Py_NewRef(sweep);
    self->track_yields = track_yields;
    self->sweep_at = PY_SSIZE_T_MAX;
    self->gen = ++monitor_generations;
    self->live = 1;
    live_monitor = self;
    return (PyObject *)self;
}

static int
Monitor_traverse(Monitor *self, visitproc visit, void *arg)
{
    Py_VISIT(self->running);
    Py_VISIT(self->yielded);
    Py_VISIT(self->disable);
    Py_VISIT(self->failed);
    Py_VISIT(self->sweep);
    for (size_t i = 0; i < self->capacity; i++) {
        if (self->table[i].code != NULL) {
            Target *t = self->table[i].target;
            Py_VISIT(t->target);
            Py_VISIT(t->code);
            Py_VISIT(t->recorder);
            Py_VISIT(t->ok_append);
            Py_VISIT(t->failed_append);
            Py_VISIT(t->enter);
            Py_VISIT(t->leave);
            Py_VISIT(t->fail);
        }
    }
    return 0;
}

static int
Monitor_clear(Monitor *self)
{
    monitor_close(self);
    Py_CLEAR(self->running);
    Py_CLEAR(self->yielded);
    Py_CLEAR(self->disable);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->sweep);
    return 0;
}

static void
Monitor_dealloc(Monitor *self)
{
    PyObject_GC_UnTrack(self);
    Monitor_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Monitor_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Monitor_add, METH_FASTCALL,
     "add(code, target) -> bool: report code's calls as target says (its steps, suspendable, "
     "recorder, ok_append, failed_append, probe and param); False if code is known already."},
    {"close", (PyCFunction)Monitor_close, METH_NOARGS,
     "close(): forget every target and every call on the stacks; another Monitor may start."},
    {"py_start", (PyCFunction)(void (*)(void))Monitor_py_start, METH_FASTCALL,
     "The PY_START callback (code, offset)."},
    {"py_return", (PyCFunction)(void (*)(void))Monitor_py_return, METH_FASTCALL,
     "The PY_RETURN callback (code, offset, value)."},
    {"py_unwind", (PyCFunction)(void (*)(void))Monitor_py_unwind, METH_FASTCALL,
     "The PY_UNWIND callback (code, offset, exception)."},
    {"py_yield", (PyCFunction)(void (*)(void))Monitor_py_yield, METH_FASTCALL,
     "The PY_YIELD callback (code, offset, value): notes the time of a tracked frame's yield."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Monitor_members[] = {
    {"sweep_at", Py_T_PYSSIZET, offsetof(Monitor, sweep_at), 0,
     "A generator starting with this many calls in `running` calls sweep() first."},
    {"stacked", Py_T_PYSSIZET, offsetof(Monitor, stacked), Py_READONLY,
     "Calls running on the per-thread stacks (not in `running`)."},
    {"live", Py_T_INT, offsetof(Monitor, live), Py_READONLY, "Whether close() has not run."},
    {"starts", Py_T_ULONGLONG, offsetof(Monitor, starts), Py_READONLY,
     "PY_START events of targets."},
    {"returns", Py_T_ULONGLONG, offsetof(Monitor, returns), Py_READONLY,
     "PY_RETURN events of targets."},
    {"unwinds", Py_T_ULONGLONG, offsetof(Monitor, unwinds), Py_READONLY,
     "PY_UNWIND events of targets."},
    {"yields", Py_T_ULONGLONG, offsetof(Monitor, yields), Py_READONLY,
     "PY_YIELD events of targets."},
    {"misses", Py_T_ULONGLONG, offsetof(Monitor, misses), Py_READONLY,
     "Local events of code that is no target (answered with DISABLE)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject MonitorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent._speedups.Monitor",
    .tp_basicsize = sizeof(Monitor),
    .tp_dealloc = (destructor)Monitor_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Monitor(running, yielded, disable, failed, sweep, track_yields=False): "
              "sys.monitoring callbacks in C for agent.weaving.monitoring.",
    .tp_traverse = (traverseproc)Monitor_traverse,
    .tp_clear = (inquiry)Monitor_clear,
    .tp_methods = Monitor_methods,
    .tp_members = Monitor_members,
    .tp_new = Monitor_new,
};
#else
#define TW_HAVE_MONITOR 0
#endif /* 3.12+ */

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
tw_ticks(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong((unsigned long long)now());
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
    {"ticks", (PyCFunction)tw_ticks, METH_NOARGS,
     "ticks() -> the clock now, in its ticks (what Recorder.add() takes differences of)."},
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
#if TW_HAVE_MONITOR
    if (PyType_Ready(&MonitorType) < 0) {
        return NULL;
    }
#endif
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&RecorderType);
    if (PyModule_AddObject(module, "Recorder", (PyObject *)&RecorderType) < 0
        || PyModule_AddIntConstant(module, "SLOTS", SLOTS) < 0
        || PyModule_AddIntConstant(module, "MANTISSA_BITS", MANTISSA_BITS) < 0
        || PyModule_AddIntConstant(module, "HAVE_TSC", TW_HAVE_TSC) < 0
        || PyModule_AddIntConstant(module, "HAVE_MONITOR", TW_HAVE_MONITOR) < 0
#if TW_HAVE_MONITOR
        || PyModule_AddObjectRef(module, "Monitor", (PyObject *)&MonitorType) < 0
#endif
    ) {
        Py_DECREF(&RecorderType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
