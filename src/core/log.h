/* log.h — log lines in Celery's shape:
 *     [2026-11-28 10:43:39,447: INFO/MainProcess] message
 * Pool children log as "ForkPoolWorker-N".  Output goes to stderr (or a
 * file), one write(2) per line so lines from several processes never
 * interleave.
 */
#ifndef CELERIAC_LOG_H
#define CELERIAC_LOG_H

typedef enum cel_log_level {
    CEL_LOG_DEBUG = 10,
    CEL_LOG_INFO = 20,
    CEL_LOG_WARNING = 30,
    CEL_LOG_ERROR = 40,
    CEL_LOG_CRITICAL = 50,
} cel_log_level;

/* Parses "DEBUG", "info", "WARNING", "warn", "ERROR", "CRITICAL", "FATAL"
 * (any case).  Returns 0 and the level in *out, or -1. */
int cel_log_parse_level(const char *s, cel_log_level *out);
void cel_log_set_level(cel_log_level lvl);
cel_log_level cel_log_get_level(void);
/* The process name in brackets: "MainProcess", "ForkPoolWorker-1". Copied. */
void cel_log_set_process(const char *name);
/* Redirects to a file (append); NULL or "-" = stderr.  Returns 0 or -1. */
int cel_log_set_file(const char *path);

void cel_log(cel_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define cel_debug(...) cel_log(CEL_LOG_DEBUG, __VA_ARGS__)
#define cel_info(...) cel_log(CEL_LOG_INFO, __VA_ARGS__)
#define cel_warn(...) cel_log(CEL_LOG_WARNING, __VA_ARGS__)
#define cel_error(...) cel_log(CEL_LOG_ERROR, __VA_ARGS__)
#define cel_crit(...) cel_log(CEL_LOG_CRITICAL, __VA_ARGS__)

#endif
