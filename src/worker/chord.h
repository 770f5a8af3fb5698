/* chord.h — chords on the Redis result backend, as Celery 5.2.6's
 * RedisBackend.on_chord_part_return does them (see chord.c).
 *
 * The process that ran a header task (its message's embed carries `chord`,
 * the body signature) hands the parent a *part*: JSON text naming the task,
 * its group, group_index, the body, the state and the encoded result.  The
 * parent, which owns the backend and broker connections, joins it after the
 * task's own record is stored; the part that completes the join sends the
 * body (or stores its ChordError). */
#ifndef CELERIAC_CHORD_H
#define CELERIAC_CHORD_H

#include "backend/backend.h"
#include "broker/transport.h"
#include "core/message.h"
#include <jansson.h>

/* The part for header task `m` that ended in `state` (SUCCESS, FAILURE,
 * REVOKED) with `result` (the value or exception dict; borrowed, NULL =
 * None).  `running` is the task in whose process the part is returned (the
 * body's parent), NULL outside a task.  Returns malloc'd text (one line), or
 * NULL when `m` is not a chord header task. */
char *cel_chord_part(const cel_message *m, const char *state, const json_t *result,
                     const cel_message *running, size_t *len);

/* The same for signature `sig` (a chain element whose options carry
 * task_id, group_id, group_index and chord): the rest of a failed chain
 * inside a chord header (Celery's mark_as_failure). */
char *cel_chord_part_sig(const json_t *sig, const char *state, const json_t *result,
                         const cel_message *running, size_t *len);

/* The same for a message the parent holds only as raw envelope text (a
 * header task lost with its process, timed out or expired). */
char *cel_chord_part_raw(const char *raw, size_t len, const char *state, const json_t *result,
                         size_t *out_len);

/* Joins one part (Celery's on_chord_part_return): when it completes the
 * chord, sends the body with the header's results via `tr`, or stores the
 * body's FAILURE (ChordError) and sends its errbacks. */
void cel_chord_part_return(cel_backend *be, cel_transport *tr, const char *part, size_t len);

#endif
