"""Least privilege for the service: what it creates is its own, it runs as its own account,
and a crash leaves no memory image holding mail.

- ``umask 077`` for ``serve`` and every command (:func:`private_umask`): stores are created
  0700 (folders) and 0600 (files), whatever the shell's umask was.
- At start, stores found with wider permissions are narrowed (:func:`narrow_modes`); ``serve``
  writes what it changed into the application log.
- Started as root with ``[gateway] user``, ``serve`` binds its listening ports, gives the home
  folder to that account, then switches to it for good (:func:`drop_privileges`).
- Memory dumps are off (``RLIMIT_CORE`` 0 and ``prctl(PR_SET_DUMPABLE, 0)``): a dump of a
  worker holds the messages it was scanning, passwords and keys. ``[gateway] core_dumps``
  turns them on into ``<home>/cores``, each at most ``core_dumps_max_bytes``, the folder kept
  under the same cap by the retention engine.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import resource
import stat
from collections.abc import Iterable
from pathlib import Path

import msgspec

from mailwarden_sdk import StoreDescriptor, WhenFull

from .config import Config
from .errors import ConfigError, MailwardenError

__all__ = [
    "SERVICE_UMASK",
    "ServiceAccount",
    "apply_core_dumps",
    "core_dumps_descriptor",
    "drop_privileges",
    "dumpable",
    "dumps_off",
    "narrow_modes",
    "own_home",
    "private_umask",
    "service_account",
]

log = logging.getLogger(__name__)

#: Folders 0700, files 0600: stores hold mail, addresses and credentials.
SERVICE_UMASK = 0o077

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4


def private_umask() -> int:
    """Set the service's umask (077); the previous one."""
    return os.umask(SERVICE_UMASK)


def _prctl(option: int, arg: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")
    return result


def dumpable() -> bool:
    """Whether this process may leave a memory dump (``PR_GET_DUMPABLE``)."""
    return _prctl(_PR_GET_DUMPABLE, 0) != 0


def dumps_off(*, for_good: bool = True) -> None:
    """No memory dump of this process or its children: core size 0, not dumpable.

    Not dumpable also keeps other processes of the same account from attaching a debugger or
    reading ``/proc/PID/mem``. ``for_good`` lowers the hard limit too (nothing in the process
    can raise it again); without it :func:`apply_core_dumps` may still turn dumps on.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0 if for_good else hard))
    _prctl(_PR_SET_DUMPABLE, 0)


def core_dumps_descriptor(config: Config) -> StoreDescriptor:
    """The memory dumps store (only when ``[gateway] core_dumps`` is on)."""
    return StoreDescriptor(
        name="memory dumps",
        path=str(config.path_in_home(config.gateway.core_dumps_path)),
        holds="memory images of crashed gateway processes: may hold whole messages, "
        "addresses, passwords and private keys",
        max_bytes=config.gateway.core_dumps_max_bytes,
        when_full=WhenFull.REMOVE_OLDEST,
        read_permission="diagnostics.get",
    )


def apply_core_dumps(config: Config) -> Path | None:
    """Memory dumps as ``[gateway] core_dumps`` says; the folder they go to, if on.

    On: each dump is capped at ``core_dumps_max_bytes`` and written into the store's folder
    (the working directory, where the kernel's default ``core_pattern`` puts them; a
    ``core_pattern`` that pipes to a handler such as systemd-coredump sends them there
    instead). Call it after :func:`drop_privileges`: switching account resets the flag.
    """
    if not config.gateway.core_dumps:
        dumps_off()
        return None
    folder = Path(core_dumps_descriptor(config).path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    cap = config.gateway.core_dumps_max_bytes
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    limit = cap if hard == resource.RLIM_INFINITY else min(cap, hard)
    resource.setrlimit(resource.RLIMIT_CORE, (limit, hard))
    _prctl(_PR_SET_DUMPABLE, 1)
    os.chdir(folder)
    return folder


def narrow_modes(paths: Iterable[Path], *, keep: int = 0) -> list[tuple[Path, int]]:
    """Remove group and other permissions (except the bits in ``keep``) from every folder and
    regular file at or under ``paths``; (path, old mode) of each one changed.

    Symbolic links are not followed; sockets (the milter's, which the MTA must reach) and
    other special files are left as they are.
    """
    changed: list[tuple[Path, int]] = []
    strip = 0o077 & ~keep

    def narrow(path: Path) -> None:
        try:
            mode = path.lstat().st_mode
        except OSError:
            return
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)) or not mode & strip:
            return
        try:
            os.chmod(path, stat.S_IMODE(mode) & ~strip, follow_symlinks=False)
        except OSError as exc:
            log.warning("cannot narrow the permissions of %s: %s", path, exc)
            return
        changed.append((path, stat.S_IMODE(mode)))

    for root in paths:
        if not root.exists() or root.is_symlink():
            continue
        narrow(root)
        if root.is_dir():
            for folder, dirs, names in os.walk(root):
                for name in (*dirs, *names):
                    narrow(Path(folder) / name)
    return changed


class ServiceAccount(msgspec.Struct, kw_only=True, frozen=True):
    """The account ``serve`` runs as: ``[gateway] user`` and ``group``, resolved."""

    user: str
    uid: int
    gid: int
    home: Path


def service_account(config: Config) -> ServiceAccount | None:
    """``[gateway] user`` resolved (``None`` when not set); an unknown name is a config error."""
    cfg = config.gateway
    if not cfg.user:
        return None
    try:
        entry = pwd.getpwnam(cfg.user)
    except KeyError:
        raise ConfigError(
            f"gateway.user: no account named {cfg.user!r}", path=config.source
        ) from None
    gid = entry.pw_gid
    if cfg.group:
        try:
            gid = grp.getgrnam(cfg.group).gr_gid
        except KeyError:
            raise ConfigError(
                f"gateway.group: no group named {cfg.group!r}", path=config.source
            ) from None
    return ServiceAccount(user=cfg.user, uid=entry.pw_uid, gid=gid, home=Path(entry.pw_dir))


def own_home(home: Path, account: ServiceAccount) -> list[Path]:
    """Give ``home`` and everything under it to ``account``; the paths changed.

    Files a root-run command made there (``mailwarden web password`` as root, a first start
    as root) would otherwise be out of the service's reach after the switch.
    """
    changed: list[Path] = []

    def own(path: Path) -> None:
        info = path.lstat()
        if (info.st_uid, info.st_gid) != (account.uid, account.gid):
            os.lchown(path, account.uid, account.gid)
            changed.append(path)

    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    own(home)
    for folder, dirs, names in os.walk(home):
        for name in (*dirs, *names):
            own(Path(folder) / name)
    return changed


def drop_privileges(account: ServiceAccount) -> None:
    """Switch this process to ``account`` for good (groups, gid, then uid).

    Refuses to go on (``MailwardenError``) if root could be regained afterwards.
    """
    os.setgroups([account.gid])
    os.setgid(account.gid)
    os.setuid(account.uid)
    if account.uid == 0:
        return
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise MailwardenError(f"still able to become root after switching to {account.user}")
    os.environ["HOME"] = str(account.home)
    os.environ["USER"] = os.environ["LOGNAME"] = account.user
