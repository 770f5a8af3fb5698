#!/usr/bin/python3
"""A throwaway PostgreSQL cluster for the interop tests and benchmarks.

    from postgres import PostgresServer, postgres_missing
    pg = PostgresServer(workdir).start()     # initdb + pg_ctl start, as the postgres user if root
    pg.url                                   # postgresql://postgres@127.0.0.1:PORT/postgres
    pg.connect()                             # a psycopg2 connection (autocommit)
    pg.stop(mode="immediate"); pg.start()    # crash and restart, same data and port
    pg.stop()

    PostgresServer(workdir, password="pw", tls={"certfile": ..., "keyfile": ...})
        password: TCP connections need it (scram-sha-256); the URL carries it.
        tls: ssl=on with that certificate, and pg_hba accepts TCP over TLS only
        (hostssl); the URL asks for sslmode=require.

The server refuses to run as root, so when run as root initdb and pg_ctl run as
the ``postgres`` user (``su postgres -s /bin/sh -c ...``); the work folder is
made mode 755 so that user reaches it. Trust authentication, loopback only,
its own port (a free one) and its socket in the data folder. ``fsync=off``
unless durable=True.

Run as a script: ``tests/interop/postgres.py [--workdir D]`` starts a cluster,
prints its URL and stops it on Ctrl-C / SIGTERM.
"""

import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def pg_bindir():
    """The folder holding initdb and pg_ctl, or None."""
    env = os.environ.get("PG_BINDIR")
    if env and Path(env, "pg_ctl").exists():
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).resolve().parent if which else None


def postgres_missing():
    """None if a cluster can be started here, else the reason."""
    bindir = pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        return "PostgreSQL server binaries (initdb, pg_ctl) not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "python3-psycopg2 is not installed"
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, workdir=None, port=None, durable=False, extra_conf=(), password=None,
                 tls=None):
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="celeriac-pg-")
        self.workdir = Path(workdir)
        self.datadir = self.workdir / "data"
        self.logfile = self.workdir / "postgres.log"
        self.port = port or free_port()
        self.durable = durable
        self.extra_conf = list(extra_conf)
        self.bindir = pg_bindir()
        self.as_root = os.geteuid() == 0
        self.initialised = False
        self.password = password
        self.tls = dict(tls) if tls else None

    @property
    def url(self):
        from urllib.parse import quote
        cred = "postgres:%s" % quote(self.password, safe="") if self.password else "postgres"
        return "postgresql://%s@127.0.0.1:%d/postgres%s" % (
            cred, self.port, "?sslmode=require" if self.tls else "")

    def url_with(self, password=None, **params):
        """The URL with another password and/or other query parameters (sslmode=...)."""
        from urllib.parse import quote, urlencode
        pw = self.password if password is None else password
        cred = "postgres:%s" % quote(pw, safe="") if pw else "postgres"
        q = {"sslmode": "require"} if self.tls else {}
        q.update(params)
        return "postgresql://%s@127.0.0.1:%d/postgres%s" % (
            cred, self.port, "?" + urlencode(q) if q else "")

    def _run(self, argv, check=True, timeout=120):
        """Run a server tool, as the postgres user when we are root."""
        if self.as_root:
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(shlex.quote(a) for a in argv)]
        else:
            cmd = argv
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout)
        if check and proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-4000:] if self.logfile.exists() else ""
            raise RuntimeError("%s failed (%d):\n%s\n%s" % (
                argv[0], proc.returncode, proc.stdout.decode(errors="replace"), log))
        return proc

    def _prepare(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        # Every folder above must be reachable by the postgres user.
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        self._run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-A", "trust",
                   "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"])
        if self.password or self.tls:
            self._secure()
        self.initialised = True

    def _secure(self):
        """pg_hba: the socket trusted (for setting the password), TCP only with
        the password and/or only over TLS; the certificate copied in, 0600 and
        owned by the server's user as the server demands."""
        method = "scram-sha-256" if self.password else "trust"
        kind = "hostssl" if self.tls else "host"
        (self.datadir / "pg_hba.conf").write_text(
            "local all all trust\n%s all all 127.0.0.1/32 %s\n" % (kind, method))
        if self.tls:
            for key, name in (("certfile", "server.crt"), ("keyfile", "server.key")):
                dst = self.datadir / name
                shutil.copyfile(self.tls[key], dst)
                os.chmod(dst, 0o600)
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            for name in ("pg_hba.conf", "server.crt", "server.key"):
                if (self.datadir / name).exists():
                    os.chown(self.datadir / name, pw.pw_uid, pw.pw_gid)

    def start(self, timeout=60):
        if not self.initialised:
            self._prepare()
        opts = ["-p %d" % self.port, "-k %s" % self.datadir,
                "-c listen_addresses=127.0.0.1", "-c max_connections=100"]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        if self.tls:
            opts += ["-c ssl=on", "-c ssl_cert_file=server.crt", "-c ssl_key_file=server.key"]
        opts += ["-c %s" % c for c in self.extra_conf]
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o", " ".join(opts),
                   "-l", str(self.logfile), "-w", "-t", str(int(timeout)), "start"])
        if self.password:
            # Over the (trusted) socket: TCP needs the password already.
            sql = "ALTER USER postgres PASSWORD '%s'" % self.password.replace("'", "''")
            self._run([str(self.bindir / "psql"), "-h", str(self.datadir), "-p", str(self.port),
                       "-U", "postgres", "-d", "postgres", "-qAtc", sql])
        return self

    def stop(self, mode="fast"):
        if not self.initialised or not (self.datadir / "postmaster.pid").exists():
            return
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w",
                   "stop"], check=False)

    def running(self):
        return self.initialised and (self.datadir / "postmaster.pid").exists()

    def connect(self, autocommit=True):
        import psycopg2
        conn = psycopg2.connect(self.url, connect_timeout=10)
        conn.autocommit = autocommit
        return conn

    def cleanup(self):
        self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir")
    a = ap.parse_args()
    reason = postgres_missing()
    if reason:
        sys.exit("postgres.py: " + reason)
    pg = PostgresServer(a.workdir).start()
    print(pg.url, flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        pg.cleanup() if a.workdir is None else pg.stop()


if __name__ == "__main__":
    main()
