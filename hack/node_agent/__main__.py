"""Command line of the node agent.

    python -m node_agent [run] --kubeconfig PATH --state-dir DIR [--node-name local-node] [--images FILE]
    python -m node_agent logs NAMESPACE POD [-c CONTAINER] [-p] [-f] [--tail N] [--state-dir DIR]
    python -m node_agent cleanup [--state-dir DIR]
    python -m node_agent make-pvs [--count 10] [--dir DIR] [--size 5Gi] [--kind local|hostPath]

(with ``hack/`` on PYTHONPATH, or through ``hack/node-agent.sh``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from . import runtime
from .state import StateDir

MO_CACHE = os.environ.get("MO_CACHE") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "migration-operator"
)
DEFAULT_KUBECONFIG = f"{MO_CACHE}/cluster/kubeconfig"
DEFAULT_STATE = f"{MO_CACHE}/cluster/node"
DEFAULT_PV_DIR = f"{MO_CACHE}/cluster/pv"
DEFAULT_IMAGES = str(Path(runtime.HACK_DIR) / "images.yaml")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # urllib3 is chatty about every retried connection while the apiserver restarts.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def cmd_run(args: argparse.Namespace) -> int:
    from .agent import Agent
    from .kube import Kube
    from .logs import serve

    _setup_logging(args.verbose)
    log = logging.getLogger("node_agent")
    if os.geteuid() != 0:
        log.error("the node agent must run as root (it makes mount namespaces and bind mounts)")
        return 2
    while not Path(args.kubeconfig).exists():
        log.info("waiting for %s", args.kubeconfig)
        time.sleep(2)
    agent = Agent(
        Kube(args.kubeconfig),
        args.state_dir,
        args.node_name,
        args.images,
        kubelet_port=args.kubelet_port,
        backoff_base=args.backoff_base,
        backoff_max=args.backoff_max,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Like a kubelet restart: the agent goes, the pods stay (their shims are in other sessions).
        log.info("signal %d: stopping the agent, pod processes keep running", signum)
        agent.stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.kubelet_port:
        try:
            serve(agent.state, "127.0.0.1", args.kubelet_port)
            log.info("serving /containerLogs on https://127.0.0.1:%d", args.kubelet_port)
        except Exception as e:  # kubectl logs is a convenience; the node works without it
            log.warning("cannot serve the kubelet API on port %d: %s", args.kubelet_port, e)
    log.info("node agent for %s starting (state %s, images %s)", args.node_name, args.state_dir, args.images)
    agent.run()
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from .logs import LogNotFound, container_dir, follow, log_file, read_log

    state = StateDir(args.state_dir)
    try:
        cdir = container_dir(state, args.namespace, args.pod, args.container)
        path, run = log_file(cdir, args.previous)
    except LogNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    out.write(read_log(path, args.tail))
    out.flush()
    if args.follow:
        try:
            for chunk in follow(path, run, path.stat().st_size):
                out.write(chunk)
                out.flush()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Kill every pod process the state directory knows of (cluster-down)."""
    state = StateDir(args.state_dir)
    targets: list[tuple[int | None, int | None, str | None]] = []
    for rec in state.load_all():
        for cr in rec.all_containers():
            if cr.pid or cr.mntns:
                targets.append((cr.pid, cr.pid_start, cr.mntns))
    # Also any shim started for this state dir whose record was lost.
    marker = str(state.pods)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"node_agent.shim" in cmdline and any(
            a.decode(errors="replace").startswith(marker) for a in cmdline
        ):
            targets.append((int(entry), None, runtime.mntns_of(int(entry))))
    # The /proc scan finds the recorded shims again: one entry per process.
    targets = list({t[0] or t[2]: t for t in targets}.values())
    for pid, start, ns in targets:
        runtime.signal_container(pid, start, ns, signal.SIGTERM)
    deadline = time.time() + args.grace
    while time.time() < deadline and not all(runtime.container_gone(*t) for t in targets):
        time.sleep(0.2)
    for pid, start, ns in targets:
        runtime.signal_container(pid, start, ns, signal.SIGKILL)
    alive = [t for t in targets if not runtime.container_gone(*t)]
    print(
        f"stopped {len(targets) - len(alive)} container process(es)"
        + (f", {len(alive)} still alive" if alive else "")
    )
    return 1 if alive else 0


def cmd_make_pvs(args: argparse.Namespace) -> int:
    from .agent import PV_LABEL
    from .kube import ApiError, Kube

    _setup_logging(False)
    kube = Kube(args.kubeconfig)
    base = Path(args.dir)
    created = 0
    for i in range(1, args.count + 1):
        name = f"{args.prefix}-{i:03d}"
        path = base / name
        path.mkdir(parents=True, exist_ok=True)
        source: dict[str, object]
        if args.kind == "local":
            source = {"local": {"path": str(path)}}
        else:
            source = {"hostPath": {"path": str(path), "type": "Directory"}}
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {PV_LABEL: "true"}},
            "spec": {
                "capacity": {"storage": args.size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",  # recycled by the agent, see Agent.recycle_pvs
                "storageClassName": args.storage_class,
                "volumeMode": "Filesystem",
                **source,
                # Required for local volumes, harmless for hostPath: the data lives on this node only.
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [args.node_name],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        try:
            kube.create("/api/v1/persistentvolumes", pv)
            created += 1
        except ApiError as e:
            if e.status != 409:
                raise
    print(
        f"created {created} persistentvolume(s), {args.count - created} already existed ({args.kind}, "
        f"storageClass {args.storage_class}, dirs under {base})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m node_agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run the node agent (the default)")
    run.add_argument("--kubeconfig", default=DEFAULT_KUBECONFIG)
    run.add_argument("--state-dir", default=DEFAULT_STATE)
    run.add_argument("--node-name", default="local-node")
    run.add_argument("--images", default=DEFAULT_IMAGES)
    run.add_argument("--kubelet-port", type=int, default=10250, help="0 disables the /containerLogs endpoint")
    run.add_argument(
        "--backoff-base", type=float, default=10, help="first crash-loop back-off (kubelet: 10s)"
    )
    run.add_argument("--backoff-max", type=float, default=300, help="back-off cap (kubelet: 300s)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    logs = sub.add_parser("logs", help="print a container's log (what `kubectl logs` shows)")
    logs.add_argument("namespace")
    logs.add_argument("pod")
    logs.add_argument("-c", "--container")
    logs.add_argument("-p", "--previous", action="store_true")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", type=int)
    logs.add_argument("--state-dir", default=DEFAULT_STATE)
    logs.set_defaults(func=cmd_logs)

    cleanup = sub.add_parser("cleanup", help="kill every pod process (cluster down)")
    cleanup.add_argument("--state-dir", default=DEFAULT_STATE)
    cleanup.add_argument("--grace", type=float, default=5)
    cleanup.set_defaults(func=cmd_cleanup)

    pvs = sub.add_parser("make-pvs", help="create local PersistentVolumes backed by directories")
    pvs.add_argument("--kubeconfig", default=DEFAULT_KUBECONFIG)
    pvs.add_argument("--count", type=int, default=10)
    pvs.add_argument("--dir", default=DEFAULT_PV_DIR)
    pvs.add_argument("--size", default="5Gi")
    pvs.add_argument("--kind", choices=["local", "hostPath"], default="local")
    pvs.add_argument("--storage-class", default="local")
    pvs.add_argument("--node-name", default="local-node")
    pvs.add_argument("--prefix", default="local-pv")
    pvs.set_defaults(func=cmd_make_pvs)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in ("run", "logs", "cleanup", "make-pvs", "-h", "--help"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
