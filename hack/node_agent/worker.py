"""One thread per pod: the kubelet's pod worker (start, watch, restart, probe, report, terminate)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import runtime
from .envres import (
    CommandError,
    ConfigError,
    container_argv,
    process_env,
    qos_class,
    resolve_env,
    resolve_program,
    service_env,
)
from .images import ImageNotFound
from .kube import ApiError
from .probes import Prober
from .state import ContainerRecord, PodRecord, Termination
from .termination import termination_message
from .volumes import ApiSources, VolumeError, VolumeManager, container_mounts

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)
Obj = dict[str, Any]

VOLUME_REFRESH_SECONDS = 60
TICK_SECONDS = 1.0
# The kubelet resets a container's crash-loop back-off once it ran this long without trouble.
BACKOFF_RESET_SECONDS = 600
GONE_GRACE_SECONDS = 2


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def terminated_state(t: Termination | None) -> Obj | None:
    """A ContainerState with ``terminated`` (``None`` when there is no such run)."""
    if t is None:
        return None
    term = {
        "exitCode": t.exit_code,
        "reason": t.reason,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
        "containerID": t.container_id or None,
        "message": t.message or None,
    }
    return {"terminated": {k: v for k, v in term.items() if v is not None}}


class PodWorker:
    def __init__(self, agent: Agent, pod: Obj, record: PodRecord | None) -> None:
        meta = pod["metadata"]
        self.agent = agent
        self.uid: str = meta["uid"]
        self.pod = pod
        self.rec = record or PodRecord(uid=self.uid, namespace=meta["namespace"], name=meta["name"])
        self.dir = agent.state.pod_dir(self.rec)
        self.vm = VolumeManager(agent.kube, self.dir)
        self.volumes: dict[str, tuple[Path, bool]] | None = None
        self.volumes_at = 0.0
        self.volume_error: str | None = None
        self.waiting: dict[str, tuple[str, str]] = {}  # transient waiting reasons per container
        self.image_retry: dict[str, float] = {}
        self.probers: dict[str, dict[str, Prober]] = {}
        self.kill_deadline: dict[str, float] = {}  # liveness/startup kills in progress
        self.last_sent: Obj | None = None
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.gone = False
        self.finished = False
        self.term_sent = False
        self.kill_sent = False
        self._thread = threading.Thread(
            target=self._loop, name=f"pod-{self.rec.namespace}/{self.rec.name}", daemon=True
        )
        if record is None:
            self._adopt_unknown(pod)
        else:
            self._readopt()

    # -- thread plumbing ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: Obj) -> None:
        with self.lock:
            self.pod = pod
        self.wake.set()

    def mark_gone(self) -> None:
        with self.lock:
            self.gone = True
        self.wake.set()

    def _loop(self) -> None:
        while not self.finished:
            try:
                self.sync()
            except Exception:
                # One pod's trouble must never take the agent (or this worker) down.
                log.exception("pod %s/%s: sync failed", self.rec.namespace, self.rec.name)
            if self.finished:
                break
            idle = self.rec.terminal and not self.pod["metadata"].get("deletionTimestamp") and not self.gone
            self.wake.wait(30 if idle else TICK_SECONDS)
            self.wake.clear()

    # -- helpers -------------------------------------------------------------------------------

    @property
    def spec(self) -> Obj:
        spec: Obj = self.pod.get("spec") or {}
        return spec

    def _containers(self, init: bool) -> list[Obj]:
        return list(self.spec.get("initContainers" if init else "containers") or [])

    def _records(self, init: bool) -> dict[str, ContainerRecord]:
        return self.rec.init if init else self.rec.containers

    def _crec(self, name: str, init: bool) -> ContainerRecord:
        recs = self._records(init)
        if name not in recs:
            recs[name] = ContainerRecord(name=name)
        return recs[name]

    def _cdir(self, name: str) -> Path:
        return self.dir / name

    def _save(self) -> None:
        self.agent.state.save(self.rec)

    def _event(self, type_: str, reason: str, message: str, container: str | None = None) -> None:
        self.agent.event(self.pod, type_, reason, message, container)

    def _readopt(self) -> None:
        """After an agent restart: resume probes of the containers that are still running."""
        for init in (True, False):
            for c in self._containers(init):
                cr = self._records(init).get(c["name"])
                if cr and cr.pid and runtime.is_alive(cr.pid, cr.pid_start) and not init:
                    env: dict[str, str] = {}
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        env = json.loads((self._cdir(c["name"]) / f"{cr.run}.spec.json").read_text())["env"]
                    self._start_probers(c, cr, env, ready=self._api_ready(c["name"]))
        log.info("pod %s/%s: re-adopted (ip %s)", self.rec.namespace, self.rec.name, self.rec.ip)

    def _adopt_unknown(self, pod: Obj) -> None:
        """A pod this agent has no record of. Terminal pods stay terminal; containers that the API
        says were started (by an agent whose state was lost) are reported like the kubelet does
        for containers it cannot find: exit 137, ContainerStatusUnknown."""
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            self.rec.terminal = True
            self.last_sent = None
            return
        for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
            for cs in status.get(key) or []:
                st = cs.get("state") or {}
                if "running" in st or "terminated" in st:
                    cr = self._crec(cs["name"], init)
                    cr.restart_count = int(cs.get("restartCount") or 0)
                    term = st.get("terminated") or {}
                    started = (st.get("running") or term).get("startedAt") or now_iso()
                    if term:
                        cr.last = Termination(
                            int(term.get("exitCode", 0)),
                            term.get("reason") or "Error",
                            term.get("message") or "",
                            started,
                            term.get("finishedAt") or now_iso(),
                        )
                    else:
                        cr.last = Termination(
                            137,
                            "ContainerStatusUnknown",
                            "The container could not be located when the pod was terminated",
                            started,
                            now_iso(),
                        )
                    self._after_exit(cs["name"], cr, init, announce=False)

    # -- main sync -------------------------------------------------------------------------------

    def sync(self) -> None:
        with self.lock:
            pod, gone = self.pod, self.gone
        if self.finished:
            return
        if gone:
            self._teardown(time.time() + GONE_GRACE_SECONDS, wait=True)
            self._cleanup()
            log.info("pod %s/%s: gone from the API, processes stopped", self.rec.namespace, self.rec.name)
            self.finished = True
            return
        if pod["metadata"].get("deletionTimestamp"):
            self._sync_deleting(pod)
            return
        if self.rec.terminal:
            self._observe_exits(pod, restart=False)
            if not self.last_sent and self.rec.ip:
                self._report(pod, self._status(pod))
            return
        self._sync_running(pod)

    def _sync_running(self, pod: Obj) -> None:
        if not self.rec.ip:
            self.rec.ip = self.agent.state.allocate_ip(self.uid)
            self.rec.start_time = now_iso()
            self._save()
            log.info("pod %s/%s: admitted, ip %s", self.rec.namespace, self.rec.name, self.rec.ip)
        self._observe_exits(pod, restart=True)
        self._check_probes()
        if self.volumes is None or time.time() - self.volumes_at > VOLUME_REFRESH_SECONDS:
            self._setup_volumes(pod)
        policy = self.spec.get("restartPolicy") or "Always"
        initialized = True
        for c in self._containers(init=True):
            cr = self._crec(c["name"], init=True)
            if cr.done:
                if cr.last and cr.last.exit_code != 0:
                    initialized = False  # failed for good (restartPolicy Never): the pod fails
                    break
                continue
            initialized = False
            retry_at = self.image_retry.get(c["name"], 0)
            if not cr.pid and time.time() >= max(cr.backoff_until, retry_at) and self.volumes is not None:
                self._start(pod, c, cr, init=True)
            break
        if initialized and self.volumes is not None:
            for c in self._containers(init=False):
                cr = self._crec(c["name"], init=False)
                if cr.done or cr.pid or time.time() < cr.backoff_until:
                    continue
                if c["name"] in self.image_retry and time.time() < self.image_retry[c["name"]]:
                    continue
                self._start(pod, c, cr, init=False)
        status = self._status(pod)
        if status["phase"] in ("Succeeded", "Failed"):
            self.rec.terminal = True
            self._stop_probers()
            # e.g. an init container failed for good: nothing else of this pod may keep running.
            self._teardown(time.time(), wait=False)
            self._save()
            log.info(
                "pod %s/%s: %s (restartPolicy %s)", self.rec.namespace, self.rec.name, status["phase"], policy
            )
        self._report(pod, status)

    def _setup_volumes(self, pod: Obj) -> None:
        try:
            self.volumes = self.vm.setup(pod, ApiSources(self.agent.kube), self.rec.ip, self.agent.host_ip)
            self.volume_error = None
            self.volumes_at = time.time()
        except (VolumeError, ApiError, OSError) as e:
            if self.volume_error != str(e):
                log.warning("pod %s/%s: volumes not ready: %s", self.rec.namespace, self.rec.name, e)
            self.volume_error = str(e)
            self._event("Warning", "FailedMount", f"MountVolume.SetUp failed: {e}")
            if self.volumes is not None:
                # Keep running containers on the last good volumes; retry the refresh soon.
                self.volumes_at = time.time() - VOLUME_REFRESH_SECONDS + 5

    # -- containers -----------------------------------------------------------------------------

    def _start(self, pod: Obj, c: Obj, cr: ContainerRecord, init: bool) -> None:
        name = c["name"]
        image = str(c.get("image") or "")
        try:
            img = self.agent.images().lookup(image)
        except ImageNotFound as e:
            first = self.waiting.get(name, ("",))[0] not in ("ErrImagePull", "ImagePullBackOff")
            reason = "ErrImagePull" if first else "ImagePullBackOff"
            self.waiting[name] = (reason, str(e) if first else f'Back-off pulling image "{image}": {e}')
            self.image_retry[name] = time.time() + (10 if first else 30)
            if first:
                self._event("Warning", "Failed", f'Failed to pull image "{image}": {e}', name)
            return
        self.image_retry.pop(name, None)
        sources = ApiSources(self.agent.kube)
        try:
            env = resolve_env(
                pod,
                c,
                sources,
                self.rec.ip,
                self.agent.host_ip,
                base=service_env(self.agent.kube.api_host, self.agent.kube.api_port),
            )
        except (ConfigError, ApiError) as e:
            if self.waiting.get(name) != ("CreateContainerConfigError", str(e)):
                self._event("Warning", "Failed", f"Error: {e}", name)
            self.waiting[name] = ("CreateContainerConfigError", str(e))
            return
        full_env = process_env(img, pod, env)
        cdir = self._cdir(name)
        cdir.mkdir(parents=True, exist_ok=True)
        if cr.last is not None:
            cr.restart_count += 1
        run = cr.restart_count
        log_file = cdir / f"{run}.log"
        current = cdir / "current.log"
        with contextlib.suppress(FileNotFoundError):
            current.unlink()
        current.symlink_to(log_file.name)
        term_file = cdir / "termination-log"
        term_file.write_text("")  # a fresh file per run, like the kubelet
        exit_file = cdir / f"{run}.exit"
        exit_file.unlink(missing_ok=True)
        # A fresh private /tmp per run, like a new container's filesystem (world-writable + sticky).
        tmp_dir = cdir / "tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir()
        tmp_dir.chmod(0o1777)
        started_at = now_iso()
        try:
            argv = container_argv(c, img, env)
            argv[0] = resolve_program(argv[0], full_env.get("PATH", ""))
            mounts = container_mounts(c, self.volumes or {}, env, term_file, tmp_dir, img.files)
        except (CommandError, VolumeError) as e:
            # containerd reports an unstartable process as a terminated run: StartError, exit 128.
            with log_file.open("a") as f:
                f.write(f"node-agent: {e}\n")
            cr.prev = cr.last
            cr.last = Termination(128, "StartError", str(e), started_at, now_iso(), "")
            self.waiting.pop(name, None)
            self._event("Warning", "Failed", f"Error: {e}", name)
            self._after_exit(name, cr, init)
            self._save()
            return
        cwd = c.get("workingDir") or img.working_dir or "/"
        spec = {"argv": argv, "env": full_env, "cwd": cwd, "exit_file": str(exit_file), "mounts": mounts,
                "keep": self.agent.keep_paths()}
        pid, pid_start = runtime.start_shim(spec, cdir / f"{run}.spec.json", log_file, on_exit=self.wake.set)
        cr.run, cr.pid, cr.pid_start, cr.mntns, cr.started_at = run, pid, pid_start, None, started_at
        self.waiting.pop(name, None)
        self._save()
        log.info(
            "pod %s/%s: started container %s (pid %d, run %d): %s",
            self.rec.namespace,
            self.rec.name,
            name,
            pid,
            run,
            " ".join(argv)[:300],
        )
        self._event(
            "Normal", "Pulled", f'Container image "{image}" resolved by {self.agent.images().source}', name
        )
        self._event("Normal", "Created", f"Created container {name}", name)
        self._event("Normal", "Started", f"Started container {name}", name)
        if not init:
            self._start_probers(c, cr, env)

    def _api_ready(self, name: str) -> bool:
        statuses = (self.pod.get("status") or {}).get("containerStatuses") or []
        return any(s.get("name") == name and s.get("ready") for s in statuses)

    def _start_probers(self, c: Obj, cr: ContainerRecord, env: dict[str, str], ready: bool = False) -> None:
        """``ready``: what the API last said - an agent restart must not flap a ready pod to unready."""
        name = c["name"]
        self._stop_probers(name)
        started = parse_time(cr.started_at) or time.time()
        probers: dict[str, Prober] = {}
        self.probers[name] = probers

        def startup_ok() -> bool:
            p = probers.get("startup")
            return p is None or p.result

        for kind in ("startup", "liveness", "readiness"):
            probe = c.get(f"{kind}Probe")
            if probe:
                probers[kind] = Prober(
                    kind,
                    probe,
                    c,
                    self.rec.ip,
                    env,
                    cr.pid,
                    started,
                    on_change=lambda _p: self.wake.set(),
                    gate=startup_ok if kind != "startup" else lambda: True,
                )
        if ready:
            for p in probers.values():
                p.result = True
        for p in probers.values():
            p.start()

    def _stop_probers(self, name: str | None = None) -> None:
        for n in [name] if name else list(self.probers):
            for p in self.probers.pop(n, {}).values():
                p.stop()

    def _check_probes(self) -> None:
        for c in self._containers(init=False):
            name = c["name"]
            cr = self.rec.containers.get(name)
            probers = self.probers.get(name, {})
            if not cr or not cr.pid:
                continue
            failed = [p for k, p in probers.items() if k in ("liveness", "startup") and p.failed]
            if failed and name not in self.kill_deadline:
                p = failed[0]
                msg = f"{p.kind.capitalize()} probe failed: {p.last_detail}"
                self._event("Warning", "Unhealthy", msg, name)
                self._event(
                    "Normal", "Killing", f"Container {name} failed {p.kind} probe, will be restarted", name
                )
                log.info("pod %s/%s: %s; killing container %s", self.rec.namespace, self.rec.name, msg, name)
                grace = int(self.spec.get("terminationGracePeriodSeconds") or 30)
                if p.probe.get("terminationGracePeriodSeconds") is not None:
                    grace = int(p.probe["terminationGracePeriodSeconds"])
                self.kill_deadline[name] = time.time() + grace
                runtime.signal_container(cr.pid, cr.pid_start, cr.mntns, signal.SIGTERM)
            if name in self.kill_deadline and time.time() >= self.kill_deadline[name]:
                runtime.signal_container(cr.pid, cr.pid_start, cr.mntns, signal.SIGKILL)

    def _observe_exits(self, pod: Obj, restart: bool) -> None:
        for init in (True, False):
            for c in self._containers(init):
                cr = self._records(init).get(c["name"])
                if not cr or not cr.pid:
                    continue
                if runtime.is_alive(cr.pid, cr.pid_start):
                    if cr.mntns is None:
                        ns = runtime.mntns_of(cr.pid)
                        if ns and ns != runtime.own_mntns():
                            cr.mntns = ns
                            self._save()
                    if cr.mntns is not None:
                        runtime.pin_mntns(cr.pid, cr.mntns)
                    continue
                # The shim ended: the container's main process is gone. Like a PID namespace
                # going away, nothing it left behind may survive.
                runtime.signal_container(None, None, cr.mntns, signal.SIGKILL)
                runtime.unpin_mntns(cr.mntns)
                cdir = self._cdir(c["name"])
                ex = runtime.read_exit(cdir / f"{cr.run}.exit")
                if ex is None:
                    # Killed before the shim could record anything (SIGKILL of the group).
                    ex = {"exitCode": 137, "finishedAt": now_iso()}
                code = int(ex.get("exitCode", 137))
                reason = str(ex.get("reason") or ("Completed" if code == 0 else "Error"))
                if reason == "StartError":
                    message = str(ex.get("message") or "")
                else:
                    message = termination_message(
                        cdir / "termination-log",
                        cdir / f"{cr.run}.log",
                        c.get("terminationMessagePolicy"),
                        code,
                    )
                cr.prev = cr.last
                cr.last = Termination(
                    code,
                    reason,
                    message,
                    cr.started_at or now_iso(),
                    str(ex.get("finishedAt") or now_iso()),
                    f"process://{cr.pid}",
                )
                log.info(
                    "pod %s/%s: container %s exited with %d (%s)",
                    self.rec.namespace,
                    self.rec.name,
                    c["name"],
                    code,
                    reason,
                )
                cr.pid = cr.pid_start = None
                cr.mntns = None
                self._stop_probers(c["name"])
                self.kill_deadline.pop(c["name"], None)
                if restart:
                    self._after_exit(c["name"], cr, init)
                else:
                    cr.done = True
                self._save()

    def _after_exit(self, name: str, cr: ContainerRecord, init: bool, announce: bool = True) -> None:
        """Apply the restart policy to a container that just terminated."""
        assert cr.last is not None
        policy = self.spec.get("restartPolicy") or "Always"
        code = cr.last.exit_code
        if init:
            # Init containers are restarted on failure unless the pod's policy is Never.
            restart = code != 0 and policy != "Never"
            cr.done = not restart
        elif policy == "Always" or (policy == "OnFailure" and code != 0):
            restart = True
        else:
            restart = False
            cr.done = True
        if not restart:
            return
        ran = (parse_time(cr.last.finished_at) or time.time()) - (
            parse_time(cr.last.started_at) or time.time()
        )
        if ran > BACKOFF_RESET_SECONDS:
            cr.backoff_seconds = 0
        if cr.backoff_seconds <= 0:
            # The first restart is immediate; the back-off applies from the next crash on.
            cr.backoff_until = 0
            cr.backoff_seconds = self.agent.backoff_base
        else:
            cr.backoff_until = (parse_time(cr.last.finished_at) or time.time()) + cr.backoff_seconds
            if announce:
                self._event(
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {name} in pod "
                    f"{self.rec.name}_{self.rec.namespace}({self.uid})",
                    name,
                )
            cr.backoff_seconds = min(cr.backoff_seconds * 2, self.agent.backoff_max)

    # -- termination ----------------------------------------------------------------------------

    def _running(self) -> list[ContainerRecord]:
        return [cr for cr in self.rec.all_containers() if cr.pid]

    def _teardown(self, deadline: float, wait: bool) -> None:
        """SIGTERM every container, SIGKILL what is left at ``deadline``; with ``wait``, block until gone."""
        self._stop_probers()
        for cr in self._running():
            runtime.signal_container(cr.pid, cr.pid_start, cr.mntns, signal.SIGTERM)
        while wait and any(
            not runtime.container_gone(cr.pid, cr.pid_start, cr.mntns) for cr in self._running()
        ):
            if time.time() >= deadline:
                for cr in self._running():
                    runtime.signal_container(cr.pid, cr.pid_start, cr.mntns, signal.SIGKILL)
            time.sleep(0.2)
            if time.time() > deadline + 10:
                break
        if not wait and deadline <= time.time():
            for cr in self._running():
                runtime.signal_container(cr.pid, cr.pid_start, cr.mntns, signal.SIGKILL)

    def _sync_deleting(self, pod: Obj) -> None:
        meta = pod["metadata"]
        deadline = parse_time(meta.get("deletionTimestamp")) or time.time()
        if meta.get("deletionGracePeriodSeconds") == 0:
            deadline = time.time()
        if not self.term_sent:
            self.term_sent = True
            self._stop_probers()
            for cr in self._running():
                self._event("Normal", "Killing", f"Stopping container {cr.name}", cr.name)
                runtime.signal_container(cr.pid, cr.pid_start, cr.mntns, signal.SIGTERM)
            log.info(
                "pod %s/%s: deleting (grace until %s)",
                self.rec.namespace,
                self.rec.name,
                meta.get("deletionTimestamp"),
            )
        self._observe_exits(pod, restart=False)
        if self._running():
            if time.time() >= deadline and not self.kill_sent:
                self.kill_sent = True
                for cr in self._running():
                    runtime.signal_container(cr.pid, cr.pid_start, cr.mntns, signal.SIGKILL)
            return
        # Every process is gone: report the terminal state, then let the object go (kubelet style).
        if self.rec.ip:
            self._report(pod, self._status(pod, terminating=True))
        try:
            self.agent.kube.delete(
                f"/api/v1/namespaces/{self.rec.namespace}/pods/{self.rec.name}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
        except ApiError as e:
            if e.status != 409:  # 409: another pod of that name now; ours is gone
                raise
        self._cleanup()
        log.info("pod %s/%s: deleted", self.rec.namespace, self.rec.name)
        self.finished = True

    def _cleanup(self) -> None:
        """Forget the pod: volumes (secrets!), private /tmp dirs, spec files (env!) and the IP go; logs stay
        for `logs`."""
        self._stop_probers()
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        for d in self.dir.glob("*/tmp"):
            shutil.rmtree(d, ignore_errors=True)
        for f in self.dir.glob("*/*.spec.json"):
            f.unlink(missing_ok=True)
        (self.dir / "state.json").unlink(missing_ok=True)
        for cr in self.rec.all_containers():
            runtime.unpin_mntns(cr.mntns)
        self.agent.state.release_ip(self.uid)

    # -- status ---------------------------------------------------------------------------------

    def _container_status(
        self, c: Obj, cr: ContainerRecord, init: bool, initialized: bool
    ) -> tuple[Obj, str]:
        """(containerStatus, category) with category one of running/waiting/stopped."""
        name = c["name"]
        image = str(c.get("image") or "")
        try:
            image_id = f"images.yaml://{self.agent.images().lookup(image).pattern}"
        except ImageNotFound:
            image_id = ""
        st: Obj = {
            "name": name,
            "image": image,
            "imageID": image_id,
            "restartCount": cr.restart_count,
            "ready": False,
            "started": False,
        }
        last = terminated_state(cr.last)
        probers = self.probers.get(name, {})
        if cr.pid:
            st["state"] = {"running": {"startedAt": cr.started_at}}
            st["containerID"] = f"process://{cr.pid}"
            started = "startup" not in probers or probers["startup"].result
            st["started"] = started
            st["ready"] = started and ("readiness" not in probers or probers["readiness"].result) and not init
            if last:
                st["lastState"] = last
            return st, "running"
        if name in self.waiting:
            reason, message = self.waiting[name]
            st["state"] = {"waiting": {"reason": reason, "message": message}}
            if last:
                st["lastState"] = last
            return st, "stopped" if last else "waiting"
        if last and (cr.done or self.rec.terminal or self.term_sent):
            st["state"] = last
            st["ready"] = init and cr.last is not None and cr.last.exit_code == 0
            if cr.last and cr.last.container_id:
                st["containerID"] = cr.last.container_id
            prev = terminated_state(cr.prev)
            if prev:
                st["lastState"] = prev
            return st, "stopped"
        if last:
            if time.time() < cr.backoff_until:
                left = int(cr.backoff_seconds / 2) or int(self.agent.backoff_base)
                pod_ref = f"{self.rec.name}_{self.rec.namespace}({self.uid})"
                msg = f"back-off {left}s restarting failed container={name} pod={pod_ref}"
                st["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": msg}}
            else:
                st["state"] = {"waiting": {"reason": "ContainerCreating"}}
            st["lastState"] = last
            return st, "stopped"
        reason = "PodInitializing" if not init and not initialized else "ContainerCreating"
        st["state"] = {"waiting": {"reason": reason}}
        if self.volume_error and self.volumes is None:
            st["state"]["waiting"]["message"] = self.volume_error
        return st, "waiting"

    def _status(self, pod: Obj, terminating: bool = False) -> Obj:
        policy = self.spec.get("restartPolicy") or "Always"
        init_statuses = []
        pending_init = False
        init_failed = False
        for c in self._containers(True):
            cr = self._crec(c["name"], True)
            st, _cat = self._container_status(c, cr, True, False)
            init_statuses.append(st)
            if cr.done and cr.last and cr.last.exit_code != 0:
                init_failed = True
            if not (cr.done and cr.last and cr.last.exit_code == 0):
                pending_init = True
        statuses = []
        running = waiting = stopped = succeeded = 0
        for c in self._containers(False):
            cr = self._crec(c["name"], False)
            st, cat = self._container_status(c, cr, False, not pending_init)
            statuses.append(st)
            if cat == "running":
                running += 1
            elif cat == "waiting":
                waiting += 1
            else:
                stopped += 1
                if cr.last and cr.last.exit_code == 0:
                    succeeded += 1
        if init_failed:
            phase = "Failed"
        elif terminating and running == 0:
            phase = (
                "Succeeded"
                if stopped and stopped == succeeded and not pending_init and not waiting
                else "Failed"
            )
        elif pending_init or waiting:
            phase = "Pending"
        elif running:
            phase = "Running"
        elif stopped:
            if policy == "Always":
                phase = "Running"
            elif stopped == succeeded and all(
                self._crec(c["name"], False).done for c in self._containers(False)
            ):
                phase = "Succeeded"
            elif policy == "Never":
                phase = "Failed"
            else:
                phase = "Running"
        else:
            phase = "Pending"
        if self.rec.terminal and not terminating:
            # Once terminal, always terminal (never let a late observation flip it back).
            prev = (self.last_sent or pod.get("status") or {}).get("phase")
            if prev in ("Succeeded", "Failed"):
                phase = prev
        terminal = phase in ("Succeeded", "Failed")

        unready = [s["name"] for s in statuses if not s["ready"]]
        incomplete = [
            s["name"] for s in init_statuses if s["state"].get("terminated", {}).get("exitCode") != 0
        ]
        gates = [g.get("conditionType") for g in self.spec.get("readinessGates") or []]
        existing = {cond.get("type"): cond for cond in (pod.get("status") or {}).get("conditions") or []}
        # What we sent last is newer than the watched pod (the watch event may still be in flight):
        # without this, a transition time would be re-invented on every tick until it arrives.
        existing.update({cond["type"]: cond for cond in (self.last_sent or {}).get("conditions") or []})
        gates_false = [g for g in gates if existing.get(g, {}).get("status") != "True"]
        gates_ok = not gates_false

        def cond(type_: str, ok: bool, reason: str | None = None, message: str | None = None) -> Obj:
            status = "True" if ok else "False"
            prev = existing.get(type_)
            since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
            return {
                "type": type_,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": since or now_iso(),
                "reason": None if ok else reason,
                "message": None if ok else message,
            }

        completed = "PodCompleted" if terminal else None
        containers_ready = not unready and not terminal
        conditions = [
            cond("PodReadyToStartContainers", not terminal),
            cond(
                "Initialized",
                not pending_init,
                completed or "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete)}]",
            ),
            cond(
                "ContainersReady",
                containers_ready,
                completed or "ContainersNotReady",
                f"containers with unready status: [{' '.join(unready)}]",
            ),
            cond(
                "Ready",
                containers_ready and gates_ok,
                completed or ("ContainersNotReady" if unready else "ReadinessGatesNotReady"),
                f"containers with unready status: [{' '.join(unready)}]"
                if unready
                else f"corresponding condition of pod readiness gate not True: {gates_false}",
            ),
        ]
        if not self._containers(True):
            conditions[1] = cond("Initialized", True)
        status: Obj = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.agent.host_ip,
            "hostIPs": [{"ip": self.agent.host_ip}],
            "podIP": self.rec.ip,
            "podIPs": [{"ip": self.rec.ip}],
            "startTime": self.rec.start_time,
            "qosClass": qos_class(pod),
            "initContainerStatuses": init_statuses,
            "containerStatuses": statuses,
        }
        gen = pod["metadata"].get("generation")
        if gen is not None:
            status["observedGeneration"] = gen
        return status

    def _report(self, pod: Obj, status: Obj) -> None:
        if status == self.last_sent:
            return
        body = {"metadata": {"uid": self.uid}, "status": status}
        try:
            self.agent.kube.patch(
                f"/api/v1/namespaces/{self.rec.namespace}/pods/{self.rec.name}/status", body
            )
            self.last_sent = status
        except ApiError as e:
            if e.status in (404, 409, 422):
                log.info("pod %s/%s: status not updated (%s)", self.rec.namespace, self.rec.name, e)
            else:
                raise
