"""node_agent: the "kubelet" of the local cluster - pods run as plain host processes.

There is no container runtime on this machine, so one Node (``local-node``) is backed by this agent:

* it registers the Node, heartbeats its Ready condition and its Lease in ``kube-node-lease``;
* it watches the pods bound to the node (``spec.nodeName=local-node``) and runs every container as a
  local process, started through :mod:`node_agent.shim` inside a private mount namespace
  (``unshare -m --propagation private``) where the pod's volumes (ConfigMap, Secret, emptyDir, PVC,
  projected service-account token, downwardAPI) are bind-mounted at their ``mountPath``;
* images are not pulled: ``hack/images.yaml`` maps an image name to host programs (PATH, env,
  entrypoint/cmd), see :mod:`node_agent.images`;
* every pod gets its own loopback address ``127.0.1.N`` as ``status.podIP`` - but pods share the host
  network namespace, so two pods listening on the same port of ``0.0.0.0`` collide; bind ``$(POD_IP)``;
* pod status (phases, container states, conditions, restart counts, termination messages), restart
  policies with kubelet back-off, init containers, readiness/liveness/startup probes (httpGet,
  tcpSocket, exec) and graceful deletion follow the kubelet, so the real Job, ReplicaSet and
  Deployment controllers work unchanged;
* container logs go to ``<state-dir>/pods/<ns>_<pod>_<uid>/<container>/<restartCount>.log``; read
  them with ``python -m node_agent logs NS POD [-c CONTAINER]`` or ``kubectl logs`` (the agent serves
  the kubelet's ``/containerLogs`` endpoint on https://127.0.0.1:10250).

Accepted and deliberately ignored (everything runs as root on the host): resource requests and
limits (only ``status.qosClass`` is computed), ``securityContext`` (runAsUser, capabilities, ...),
nodeSelector/affinity/tolerations (scheduling is the scheduler's job; there is one node),
imagePullPolicy/imagePullSecrets, hostNetwork/hostPID (always "host"), ports/hostPort (no NAT), and
native sidecars (init containers with ``restartPolicy: Always`` are run like ordinary init containers
that must not exit). Lifecycle hooks (postStart/preStop) and gRPC probes are not implemented (gRPC
probes are reported as passing, with a warning in the log).

Restarting the agent (SIGTERM) leaves the pod processes running: each process is supervised by the
shim, which writes the exit code to a file, and the agent re-adopts live processes from its per-pod
state files on start. ``python -m node_agent cleanup --state-dir DIR`` kills every pod process.
"""
