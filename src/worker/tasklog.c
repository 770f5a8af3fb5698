/* tasklog.c — cel_task_log(): log lines from task modules, in the worker's log.
 *
 * A task module writing to stderr itself gets lines without the time, level
 * or process, interleaved with the worker's.  This call goes through the
 * worker's logger instead, so the line has Celery's task-log shape
 * (worker_task_log_format):
 *     [2026-11-28 10:43:39,447: INFO/ForkPoolWorker-1] enrich_list[<id>]: message
 * and obeys --loglevel and --logfile like every other line.
 */
#include <celeriac/task.h>

#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>

void cel_task_log(const cel_task *t, int level, const char *fmt, ...)
{
    cel_log_level lvl = level >= CEL_TASK_CRITICAL ? CEL_LOG_CRITICAL
                        : level >= CEL_TASK_ERROR  ? CEL_LOG_ERROR
                        : level >= CEL_TASK_WARNING ? CEL_LOG_WARNING
                        : level >= CEL_TASK_INFO   ? CEL_LOG_INFO
                                                   : CEL_LOG_DEBUG;
    if (lvl < cel_log_get_level())
        return;
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (t)
        cel_log(lvl, "%s[%s]: %s", cel_task_name(t), cel_task_id(t), msg);
    else
        cel_log(lvl, "%s", msg);
}
