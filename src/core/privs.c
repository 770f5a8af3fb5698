/* privs.c — `celeriac worker --uid/--gid`: run as an unprivileged user.
 *
 * Why here and in this order: a worker started by root (an init script, a
 * container entrypoint) should run its tasks as a plain user, as `celery
 * worker --uid/--gid` does.  main() calls this once, right after opening the
 * log file (so /var/log/celeriac.log may stay root-owned, as a shell's `>>`
 * redirect in a unit file would be) and before anything else: task modules
 * are dlopen'ed, the broker and backend connected, --statedb opened, the
 * metrics port bound and the pool forked as the unprivileged user, so no
 * code of a task module ever runs as root and the pool processes inherit
 * the dropped ids.  (Celery drops even earlier, before its log file; a
 * metrics port below 1024 therefore needs CAP_NET_BIND_SERVICE, not root.)
 *
 * The steps are Celery's (celery/platforms.py _setuid): the group first,
 * because after setuid() the process may no longer change it; initgroups()
 * so no supplementary group of root stays; then setuid(); then setuid(0)
 * must fail with EPERM, proving the drop cannot be undone. */
#include "core/privs.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A decimal id ("65534"), or -1 if `s` is not one. */
static long parse_number(const char *s)
{
    if (!*s)
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0 || (unsigned long)v > (unsigned long)(uid_t)-1 - 1)
        return -1;
    return v;
}

static int resolve_uid(const char *s, uid_t *uid, char *err, size_t errlen)
{
    long n = parse_number(s);
    if (n >= 0) {
        *uid = (uid_t)n;
        return 0;
    }
    struct passwd *pw = getpwnam(s);
    if (!pw) {
        set_err(err, errlen, "--uid: user does not exist: %s", s);
        return -1;
    }
    *uid = pw->pw_uid;
    return 0;
}

static int resolve_gid(const char *s, gid_t *gid, char *err, size_t errlen)
{
    long n = parse_number(s);
    if (n >= 0) {
        *gid = (gid_t)n;
        return 0;
    }
    struct group *gr = getgrnam(s);
    if (!gr) {
        set_err(err, errlen, "--gid: group does not exist: %s", s);
        return -1;
    }
    *gid = gr->gr_gid;
    return 0;
}

int cel_drop_privileges(const char *uid_s, const char *gid_s, char *err, size_t errlen)
{
    if (!uid_s && !gid_s)
        return 0;
    uid_t uid = 0;
    gid_t gid = 0;
    bool have_uid = uid_s != NULL, have_gid = gid_s != NULL;
    if (have_uid && resolve_uid(uid_s, &uid, err, errlen) < 0)
        return -1;
    if (have_gid && resolve_gid(gid_s, &gid, err, errlen) < 0)
        return -1;
    if (geteuid() != 0) {
        /* Not root: nothing to drop; asking for the ids we have is fine
         * (the same command line works under a systemd User=). */
        if ((!have_uid || uid == getuid()) && (!have_gid || gid == getgid()))
            return 0;
        set_err(err, errlen, "--uid/--gid: only root can change user or group (running as uid %u)",
                (unsigned)geteuid());
        return -1;
    }
    if (have_uid) {
        struct passwd *pw = getpwuid(uid);
        if (!have_gid) {
            if (!pw) {
                set_err(err, errlen, "--uid: uid %u has no passwd entry: give --gid too",
                        (unsigned)uid);
                return -1;
            }
            gid = pw->pw_gid;
            have_gid = true;
        }
        if (setgid(gid) < 0) {
            set_err(err, errlen, "setgid(%u): %s", (unsigned)gid, strerror(errno));
            return -1;
        }
        /* A numeric uid without a passwd entry has no supplementary groups. */
        int rc = pw ? initgroups(pw->pw_name, gid) : setgroups(1, &gid);
        if (rc < 0) {
            set_err(err, errlen, "initgroups: %s", strerror(errno));
            return -1;
        }
        if (setuid(uid) < 0) {
            set_err(err, errlen, "setuid(%u): %s", (unsigned)uid, strerror(errno));
            return -1;
        }
        if (uid != 0 && setuid(0) == 0) {
            set_err(err, errlen, "--uid: root privileges could be restored after setuid");
            return -1;
        }
        if (uid != 0 && (getuid() == 0 || geteuid() == 0)) {
            set_err(err, errlen, "--uid: still root after dropping privileges");
            return -1;
        }
    } else {
        if (setgroups(1, &gid) < 0 || setgid(gid) < 0) {
            set_err(err, errlen, "setgid(%u): %s", (unsigned)gid, strerror(errno));
            return -1;
        }
    }
    if (gid != 0 && (getgid() == 0 || getegid() == 0)) {
        set_err(err, errlen, "--gid: still in group root after dropping privileges");
        return -1;
    }
    return 0;
}
