/* privs.h — dropping root privileges for `celeriac worker --uid/--gid`. */
#ifndef CELERIAC_CORE_PRIVS_H
#define CELERIAC_CORE_PRIVS_H

#include <stddef.h>

/* Becomes `uid` / `gid` (each a name or a number, either may be NULL) as
 * Celery's maybe_drop_privileges: with a uid, the group is gid or else the
 * user's primary group, the supplementary groups are the user's
 * (initgroups), then setgid, then setuid, and regaining root must fail.
 * With only a gid, only the group changes (and the supplementary groups are
 * cleared when root, so no root group stays).  Both NULL: nothing.
 * Returns 0, or -1 with the reason in err. */
int cel_drop_privileges(const char *uid, const char *gid, char *err, size_t errlen);

#endif
