/* Whether some thread holds the GIL, read without taking it.
 *
 * A thread whose completion has arrived must take the GIL back.  If another
 * thread holds it, CPython's take_gil sleeps on a futex, and the wake-up (an
 * idle vCPU's, under TCG) costs far more than the holder keeps it: a
 * ping-pong between two threads of one process paid it on every hop.  The
 * waits spin on this flag, briefly and without the GIL, before taking it.
 *
 * CPython declares no API for this, so its internal layout is read, for the
 * versions whose layout is known here; elsewhere the address is NULL and the
 * waits take the GIL at once, as before. */
#ifndef RDMAMSG_GIL_PEEK_H
#define RDMAMSG_GIL_PEEK_H

#include <Python.h>

#if !defined(PYPY_VERSION) && !defined(Py_GIL_DISABLED) \
    && PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030F0000
#  define RDMAMSG_GIL_PEEK 1
#  ifndef Py_BUILD_CORE
#    define Py_BUILD_CORE 1
#    define RDMAMSG_UNDEF_BUILD_CORE 1
#  endif
#  if PY_VERSION_HEX < 0x030C0000
#    include "internal/pycore_runtime.h"
#  else
#    include "internal/pycore_interp.h"
#  endif
#  ifdef RDMAMSG_UNDEF_BUILD_CORE
#    undef Py_BUILD_CORE
#    undef RDMAMSG_UNDEF_BUILD_CORE
#  endif
#endif

/* The GIL's "locked" word, or NULL.  Called with the GIL held. */
static int *rdmamsg_gil_word(void)
{
#if defined(RDMAMSG_GIL_PEEK) && PY_VERSION_HEX < 0x030C0000
    return (int *)&_PyRuntime.ceval.gil.locked;
#elif defined(RDMAMSG_GIL_PEEK)
    PyInterpreterState *interp = PyInterpreterState_Get();
    return interp->ceval.gil ? (int *)&interp->ceval.gil->locked : NULL;
#else
    return NULL;
#endif
}

/* Whether the GIL is held now (word: from rdmamsg_gil_word, not NULL). */
static inline int rdmamsg_gil_held(int *word)
{
    return __atomic_load_n(word, __ATOMIC_RELAXED);
}

static inline void rdmamsg_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
