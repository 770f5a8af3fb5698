/* chaos.c — chaos.record, the task the chaos suite (tests/chaos/) counts
 * executions with.
 *
 * Why a file and not Redis: the suite restarts Redis and kills workers, and the
 * record of "this task ran in this incarnation" must survive both and must not
 * depend on the services under test.  One write(2) of one short line to an
 * O_APPEND file is atomic with respect to other writers (pool processes of
 * several workers, the Python worker) and lands in the page cache before the
 * task returns, so a SIGKILL of the worker afterwards cannot lose it.
 *
 * The line is "<task id> <worker pid> <pool pid> <unix time>": the worker pid
 * (the pool process's parent) names the incarnation, which the suite matches
 * against the incarnations it killed to tell a legitimate acks_late
 * re-execution from a duplicate.  examples/python/app.py has the same task.
 *
 * A module of its own (libceleriac-chaos.so, loaded with a second -A) rather
 * than part of the examples module: it is test machinery, not an example.
 */
#include <celeriac/task.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* chaos.record(seq, sleep_ms=0) -> seq, after sleeping sleep_ms and appending
 * one line to $CHAOS_RECORD_FILE (nothing is written when it is unset). */
static int record(cel_task *t, const json_t *args, const json_t *kwargs)
{
    (void)kwargs;
    const json_t *seq = json_array_get(args, 0);
    const json_t *ms = json_array_get(args, 1);
    if (!seq)
        return cel_task_raise(t, "builtins", "TypeError",
                              "record() missing 1 required positional argument: 'seq'");
    double sleep_ms = ms && json_is_number(ms) ? json_number_value(ms) : 0;
    if (sleep_ms > 0) {
        struct timespec ts = {(time_t)(sleep_ms / 1000),
                              (long)((sleep_ms - 1000 * (double)(time_t)(sleep_ms / 1000)) * 1e6)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    const char *path = getenv("CHAOS_RECORD_FILE");
    if (path && *path) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        char line[256];
        int n = snprintf(line, sizeof line, "%s %ld %ld %ld.%06ld\n", cel_task_id(t),
                         (long)getppid(), (long)getpid(), (long)tv.tv_sec, (long)tv.tv_usec);
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 || n <= 0 || n >= (int)sizeof line || write(fd, line, (size_t)n) != n) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            return cel_task_raise(t, "builtins", "OSError", "cannot record to %s: errno %d",
                                  path, e);
        }
        close(fd);
    }
    return cel_task_return(t, json_deep_copy(seq));
}

int celeriac_module_init(cel_registry *reg)
{
    return cel_register(reg, "chaos.record", record, NULL);
}
