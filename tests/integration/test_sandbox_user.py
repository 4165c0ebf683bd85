"""A believable user inside the sandbox: the plugin's uid has a passwd and group entry (its name, its data dir
as home), while the host's own /etc/passwd and /etc/group stay out of reach; on both backends."""

from __future__ import annotations

import json
import os
from pathlib import Path

from host.layout import Layout
from host.sandbox_user import write_etc_files
from tests.integration import test_runner_support as support
from tests.integration.harness import ServedHost
from tests.integration.test_runner_support import Jail, attack_python

jail = support.jail  # the fixture, parametrized over both backends

WHO = r"""
import getpass, grp, json, os, pwd
out = {"getuser": getpass.getuser(), "home": os.path.expanduser("~"), "uid": os.getuid()}
try:
    pw = pwd.getpwuid(os.getuid())
    out["pw"] = [pw.pw_name, pw.pw_dir, pw.pw_shell]
    out["group"] = grp.getgrgid(os.getgid()).gr_name
except KeyError as exc:
    out["pw"] = f"KeyError: {exc}"
for path in ("/etc/passwd", "/etc/group"):
    try:
        with open(path) as fh:
            out[path] = fh.read()
    except OSError as exc:
        out[path] = os.strerror(exc.errno)
try:
    open("/etc/passwd", "a").close()
    out["write"] = "written"
except OSError as exc:
    out["write"] = os.strerror(exc.errno)
print(json.dumps(out))
"""


def who(jail: Jail) -> dict[str, object]:
    """Run WHO as the plugin "demo" would run: USER/LOGNAME/HOME set, the generated files bound."""
    layout = Layout(jail.root)
    (jail.root / "run").mkdir(exist_ok=True)
    etc = write_etc_files(layout, "demo", jail.uid)
    script = jail.code / "who.py"
    script.write_text(WHO)
    home = str(layout.data("demo"))
    jail.with_(etc_files=etc, rw_paths=(*jail.policy.rw_paths, home),
               env={**jail.policy.env, "USER": "demo", "LOGNAME": "demo", "HOME": home})
    os.makedirs(home, exist_ok=True)
    os.chown(home, jail.uid, jail.uid)
    proc = support.subprocess.run(jail.argv(attack_python(), "-I", str(script)), capture_output=True, text=True,
                                  timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def test_the_plugin_knows_who_it_is(jail: Jail) -> None:
    out = who(jail)
    home = str(Layout(jail.root).data("demo"))
    # USER/LOGNAME and HOME: on both backends.
    assert (out["getuser"], out["home"], out["uid"]) == ("demo", home, jail.uid)
    if jail.backend == "bwrap":
        assert out["pw"] == ["demo", home, "/usr/sbin/nologin"]
        assert out["group"] == "demo"
    else:  # no mount namespace to show a passwd file in; the host's stays denied
        assert out["pw"] == f"KeyError: 'getpwuid(): uid not found: {jail.uid}'"


def test_cant_read_the_hosts_passwd_or_group(jail: Jail) -> None:
    out = who(jail)
    if jail.backend == "bwrap":
        # Exactly the generated entries: no host account (root and nobody are the ones every Linux has, with
        # no home and no shell), nothing of the real file.
        assert out["/etc/passwd"] == (f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
                                      f"demo:x:{jail.uid}:{jail.uid}:plugin demo:{Layout(jail.root).data('demo')}:"
                                      "/usr/sbin/nologin\n"
                                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        assert out["/etc/group"] == f"root:x:0:\ndemo:x:{jail.uid}:\nnogroup:x:65534:\n"
        assert out["write"] == "Permission denied"  # root's 0644 file, a read-only bind, and Landlock
    else:
        assert out["/etc/passwd"] == out["/etc/group"] == out["write"] == "Permission denied"


def test_cant_have_a_symlink_bound_over_etc_passwd(jail: Jail) -> None:
    """A source that is a symlink (bwrap, as root, would follow it) fails the start before bwrap runs."""
    if jail.backend != "bwrap":
        return  # etc_files are ignored without bwrap
    link = jail.root / "passwd"
    link.symlink_to("/etc/shadow")
    r = jail.with_(etc_files=(("/etc/passwd", str(link)),)).run("read", "/etc/passwd")
    assert r.returncode == 120  # SETUP_FAILED
    assert (f"namespaces: /etc/passwd: source {link} must be a regular file of uid 0 that only its owner may "
            "write") in r.stderr


def test_a_served_plugin_is_its_own_user(served: ServedHost) -> None:
    out = served.get("/plugins/echo/user").json()
    data = str(Path(served.home) / "data" / "echo")
    assert out["getuser"] == out["pw_name"] == out["USER"] == out["LOGNAME"] == "echo"
    assert out["pw_dir"] == out["home"] == data
    assert out["passwd_names"] == ["root", "echo", "nobody"]
