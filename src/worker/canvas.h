/* canvas.h — what a finished task sends on: link callbacks, the next task of
 * a chain, link_error errbacks (see canvas.c). */
#ifndef CELERIAC_CANVAS_H
#define CELERIAC_CANVAS_H

#include "core/message.h"
#include <jansson.h>

/* Hands one built message to whoever publishes it: `env` is the Redis
 * envelope text (borrowed), routed to `queue` with `priority`. */
typedef void (*cel_canvas_send_fn)(void *ud, const char *queue, int priority, const char *env,
                                   size_t len);

/* After a SUCCESS with return value `retval` (borrowed; NULL = None): sends
 * the message's callbacks (retval prepended to each mutable signature's
 * args; several go as one group) and the chain's next task (with the rest of
 * the chain).  Returns the new `children` list for the SUCCESS record (new
 * reference; [] when nothing was sent). */
json_t *cel_canvas_on_success(const cel_message *m, const json_t *retval,
                              cel_canvas_send_fn send, void *ud);

/* After a FAILURE: sends the message's errbacks as one group, each with
 * args [task_id] prepended (unless immutable), as Celery does for errbacks it
 * does not call in-process. */
void cel_canvas_on_failure(const cel_message *m, cel_canvas_send_fn send, void *ud);

/* sig.apply_async(prepend) from task `m` (parent_id m->id, root_id
 * m->root_id or m->id): a chord's body, a task or a chain of tasks.
 * Returns the id of the task sent (malloc'd) or NULL when `sig` is not a
 * task signature. */
char *cel_canvas_apply(const cel_message *m, const json_t *sig, const json_t *prepend,
                       cel_canvas_send_fn send, void *ud);

#endif
