/* Work handed to the threads of a decode step without opening a parallel region per product.
 *
 * A decode step at short and middle context is ~150 small pieces of parallel work (matrix-vector
 * products of 32–256 KB, attention and indexer ranges), each a few microseconds long. As OpenMP
 * parallel regions every one pays the region's start and end (team set-up, two barriers, the
 * second thread waking), and the threads wait for each other about a third of a step.
 *
 * team_step runs a whole step inside ONE OpenMP parallel region (the same thread pool as
 * everything else, so no second pool and no oversubscription): thread 0 runs the step's code
 * as written; the other threads wait for work, which team_run hands them through one shared
 * generation counter (a store and a load of one cache line each way). Outside a step, team_run
 * opens an ordinary parallel region, so the same kernels serve prefill and training unchanged.
 * Code a step reaches that still opens its own `#pragma omp parallel` runs there as a nested,
 * single-thread region: the same result, on one thread. */
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>

#include "../dsv4_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) {}
#endif

/* A waiting thread spins this many rounds of `pause` (about 2 µs), then checks between
 * sched_yield calls (about 0.2 µs each). A longer pause loop is worse twice over: in a virtual
 * machine the hypervisor takes the CPU from a guest that pauses too long (pause-loop exiting:
 * with 200 µs of spinning, decode over a 32K-key window ran 8% slower), and with more threads
 * than CPUs the spinning thread would hold the CPU the step's own thread needs. */
#define TEAM_SPINS 200

typedef struct Team {
    _Alignas(64) atomic_uint_fast64_t gen;   /* +1 for each piece of work handed out */
    TeamFn fn;
    void *arg;
    int nt_job;                              /* threads the current work is split over */
    int nt;                                  /* threads in the team */
    _Alignas(64) atomic_int done;            /* helpers finished with the current work */
    atomic_int quit;
} Team;

/* The team of the step this thread leads (NULL outside a step, and on helper threads). */
static _Thread_local Team *led_team;
/* Set while the leader's work is out: work asked for from inside a piece of work (none of
 * dsv4's kernels do) runs on the asking thread. */
static _Thread_local int in_team_work;

int team_threads(void) {
    if (led_team) return in_team_work ? 1 : led_team->nt;
    return omp_in_parallel() ? 1 : omp_get_max_threads();
}

void team_run(TeamFn fn, void *arg, int nt) {
    const int avail = team_threads();
    if (nt > avail) nt = avail;
    if (nt <= 1) { fn(arg, 0, 1); return; }
    Team *t = led_team;
    if (!t) {
#pragma omp parallel num_threads(nt)
        fn(arg, omp_get_thread_num(), omp_get_num_threads());
        return;
    }
    t->fn = fn;
    t->arg = arg;
    t->nt_job = nt;
    atomic_store_explicit(&t->done, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->gen, 1, memory_order_release);   /* publishes fn, arg, nt_job */
    in_team_work = 1;
    fn(arg, 0, nt);
    in_team_work = 0;
    for (long spins = 0; atomic_load_explicit(&t->done, memory_order_acquire) < t->nt - 1; spins++) {
        if (spins < TEAM_SPINS) cpu_relax();
        else sched_yield();
    }
}

/* A helper thread: take each piece of work as it is handed out until the step ends. */
static void team_serve(Team *t, int id) {
    uint_fast64_t seen = 0;
    for (;;) {
        uint_fast64_t g;
        long spins = 0;
        while ((g = atomic_load_explicit(&t->gen, memory_order_acquire)) == seen) {
            if (atomic_load_explicit(&t->quit, memory_order_acquire)) return;
            if (++spins < TEAM_SPINS) cpu_relax();
            else sched_yield();
        }
        seen = g;
        if (id < t->nt_job) t->fn(t->arg, id, t->nt_job);
        atomic_fetch_add_explicit(&t->done, 1, memory_order_release);
    }
}

int team_step(int (*body)(void *), void *arg) {
    if (led_team || omp_in_parallel() || omp_get_max_threads() < 2) return body(arg);
    Team t = {.fn = NULL};
    atomic_init(&t.gen, 0);
    atomic_init(&t.done, 0);
    atomic_init(&t.quit, 0);
    int rc = 0;
#pragma omp parallel
    {
        if (omp_get_thread_num() == 0) {
            t.nt = omp_get_num_threads();
            led_team = t.nt > 1 ? &t : NULL;
            rc = body(arg);
            led_team = NULL;
            atomic_store_explicit(&t.quit, 1, memory_order_release);
        } else {
            team_serve(&t, omp_get_thread_num());
        }
    }
    return rc;
}
