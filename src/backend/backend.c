/* backend.c — what all result backends share: the meta record and opening
 * a backend by URL scheme. */
#include "backend/backend.h"
#include "core/util.h"

#include <stdio.h>
#include <string.h>

bool cel_state_is_ready(const char *s)
{
    return !strcmp(s, "SUCCESS") || !strcmp(s, "FAILURE") || !strcmp(s, "REVOKED");
}

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

json_t *cel_result_meta(const cel_result_rec *r, bool extended, bool for_rpc)
{
    json_t *m = json_object();
    if (for_rpc)
        json_object_set_new(m, "task_id", json_string(r->task_id));
    json_object_set_new(m, "status", json_string(r->status));
    json_object_set(m, "result", r->result ? r->result : json_null());
    json_object_set_new(m, "traceback", str_or_null(r->traceback));
    json_object_set_new(m, "children", r->children ? json_incref(r->children) : json_array());
    if (!for_rpc) {
        if (cel_state_is_ready(r->status)) {
            char buf[40];
            cel_iso8601_format(cel_now(), false, buf, sizeof buf);
            json_object_set_new(m, "date_done", json_string(buf));
        } else {
            json_object_set_new(m, "date_done", json_null());
        }
    }
    if (r->group_id)
        json_object_set_new(m, "group_id", json_string(r->group_id));
    if (r->parent_id)
        json_object_set_new(m, "parent_id", json_string(r->parent_id));
    if (extended) {
        json_object_set_new(m, "name", str_or_null(r->name));
        json_object_set(m, "args", r->args ? r->args : json_null());
        json_object_set(m, "kwargs", r->kwargs ? r->kwargs : json_null());
        json_object_set_new(m, "worker", str_or_null(r->worker));
        json_object_set_new(m, "retries", json_integer(r->retries));
        json_object_set_new(m, "queue", str_or_null(r->queue));
    }
    if (!for_rpc)
        json_object_set_new(m, "task_id", json_string(r->task_id));
    return m;
}

cel_backend *cel_backend_open(const char *url, const cel_config *cfg, char *err, size_t errlen)
{
    cel_url u;
    if (cel_url_parse(url, &u, err, errlen) < 0)
        return NULL;
    cel_backend *b = NULL;
    switch (u.scheme) {
    case CEL_URL_REDIS:
    case CEL_URL_UNIX:
        b = cel_backend_redis_open(&u, cfg, err, errlen);
        break;
    case CEL_URL_RPC:
        b = cel_backend_rpc_open(cfg, err, errlen);
        break;
    default:
        snprintf(err, errlen, "not a result backend URL (use redis:// or rpc://)");
        break;
    }
    cel_url_free(&u);
    return b;
}
