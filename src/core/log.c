/* log.c — Celery-shaped log lines, one write(2) each.
 *
 * Why it looks like this:
 *  - Celery's worker prints `[2026-11-28 10:43:39,447: INFO/MainProcess] msg`
 *    (local time, milliseconds after a comma).  People grep and parse these
 *    lines, so we print exactly that shape.
 *  - The prefork pool's children log to the same stderr/file as the parent.
 *    Each line is formatted completely into a stack buffer and handed to the
 *    kernel in a single write(2); with O_APPEND (log file) or a pipe/tty
 *    (stderr) a line is never split by another process's line.
 *  - The state is a few plain globals and no locks, no stdio, no malloc, so
 *    cel_log() is usable in a freshly forked child.  (localtime_r() takes a
 *    glibc-internal lock; that is only a hazard when forking a multi-threaded
 *    process, and the worker forks from its single main thread.)
 *  - Overlong lines are cut and end in "..." rather than being split into
 *    several writes.
 */
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Longest line written, newline included; longer ones end in "...\n". */
#define LOG_LINE_MAX 8192

static cel_log_level log_level = CEL_LOG_WARNING;
static char log_process[64] = "MainProcess";
static int log_fd = STDERR_FILENO; /* ours to close only when != stderr */

int cel_log_parse_level(const char *s, cel_log_level *out)
{
    static const struct {
        const char *name;
        cel_log_level level;
    } names[] = {
        {"DEBUG", CEL_LOG_DEBUG},     {"INFO", CEL_LOG_INFO},
        {"WARNING", CEL_LOG_WARNING}, {"WARN", CEL_LOG_WARNING},
        {"ERROR", CEL_LOG_ERROR},     {"CRITICAL", CEL_LOG_CRITICAL},
        {"FATAL", CEL_LOG_CRITICAL},
    };
    if (!s)
        return -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            if (out)
                *out = names[i].level;
            return 0;
        }
    }
    return -1;
}

void cel_log_set_level(cel_log_level lvl) { log_level = lvl; }

cel_log_level cel_log_get_level(void) { return log_level; }

void cel_log_set_process(const char *name)
{
    if (!name)
        name = "MainProcess";
    size_t n = strlen(name);
    if (n >= sizeof log_process)
        n = sizeof log_process - 1;
    memcpy(log_process, name, n);
    log_process[n] = '\0';
}

int cel_log_set_file(const char *path)
{
    int fd = STDERR_FILENO;
    if (path && *path && strcmp(path, "-") != 0) {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0)
            return -1;
    }
    if (log_fd != STDERR_FILENO)
        close(log_fd);
    log_fd = fd;
    return 0;
}

static const char *level_name(cel_log_level lvl)
{
    switch (lvl) {
    case CEL_LOG_DEBUG: return "DEBUG";
    case CEL_LOG_INFO: return "INFO";
    case CEL_LOG_WARNING: return "WARNING";
    case CEL_LOG_ERROR: return "ERROR";
    case CEL_LOG_CRITICAL: return "CRITICAL";
    }
    return "LOG";
}

/* Writes all of buf, retrying on EINTR and on (rare) partial writes. */
static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report it */
        }
        buf += n;
        len -= (size_t)n;
    }
}

void cel_log(cel_log_level lvl, const char *fmt, ...)
{
    if (lvl < log_level)
        return;
    int saved_errno = errno; /* callers may log and then inspect errno */

    char line[LOG_LINE_MAX];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    time_t secs = tv.tv_sec;
    localtime_r(&secs, &tm);

    int n = snprintf(line, sizeof line, "[%04d-%02d-%02d %02d:%02d:%02d,%03d: %s/%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), level_name(lvl), log_process);
    size_t len = n < 0 ? 0 : (size_t)n;
    if (len > sizeof line - 1)
        len = sizeof line - 1;

    /* Room for the message: keep one byte for '\n' (the terminating NUL
     * vsnprintf writes lands on that byte and is then replaced). */
    size_t room = sizeof line - len - 1;
    va_list ap;
    va_start(ap, fmt);
    errno = saved_errno; /* so "%m" in fmt reports the caller's errno */
    int m = vsnprintf(line + len, room + 1, fmt, ap);
    va_end(ap);
    if (m < 0) {
        m = 0;
    } else if ((size_t)m > room) {
        /* Truncated: end the visible text with "...". */
        m = (int)room;
        memcpy(line + len + room - 3, "...", 3);
    }
    len += (size_t)m;
    line[len++] = '\n';
    write_all(log_fd, line, len);
    errno = saved_errno;
}
