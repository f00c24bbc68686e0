"""The configuration files of the single-node cluster (tests/k8s/node.py writes them, nothing else
reads them): addresses, containerd's config.toml, the CNI network, the kubelet's and kube-proxy's
configurations, kubeconfigs and client certificates for the node's components.

Every path a component would write to by default on the host is set to one under the node's run
directory here (containerd's root/state/socket, runc's state, the CNI IPAM data, the kubelet's pod
logs and volume plugins); the rest is kept from the host by the node's private mount namespace.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.k8s import harness

NODE_NAME = "node-0"
NODE_IP = "10.200.0.2"
NODE_GATEWAY = "10.200.0.1"  # via eth0: locally sent packets to a ClusterIP need a route
CLUSTER_CIDR = "10.244.0.0/16"
POD_SUBNET = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"  # cni0
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
CNI_PLUGINS = ("bridge", "host-local", "loopback")
# The kernel settings the kubelet wants (pkg/kubelet/cm setupKernelTunables) and would write into
# the machine's kernel, which is not per namespace: the node's mount namespace shows it these
# values in files bind-mounted over /proc/sys/..., so it finds them set and writes nothing.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}


def kubeconfig(path: Path, server: str, pki: Path, user: str) -> Path:
    """A kubeconfig for ``user``'s client certificate ``pki/<user>.crt``; returns ``path``."""
    cert = {"client-certificate": str(pki / f"{user}.crt"), "client-key": str(pki / f"{user}.key")}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}
        ],
        "users": [{"name": user, "user": cert}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": user}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def client_cert(pki: Path, name: str, subject: str) -> None:
    """``pki/<name>.crt`` for ``subject`` (``/O=group/CN=user``), signed by the harness's CA."""
    ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
    harness._issue_cert(pki, name, subject, ext)


def containerd_config(rundir: Path, sandbox_image: str) -> str:
    r = rundir
    return f"""version = 2
root = "{r}/containerd/root"
state = "{r}/containerd/state"
oom_score = 0
# opt would install into /opt/containerd; the others are snapshotters and tracing not used here
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{r}/containerd.sock"
[ttrpc]
  address = "{r}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  enable_selinux = false
  # The kubelet asks for oom_score_adj -998 for sandboxes; lowering it needs CAP_SYS_RESOURCE,
  # which this machine's root lacks (runc fails with "can't get final child's PID from pipe"):
  # clamp to containerd's own score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc")}"
        Root = "{r}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{r}/cni/net.d"
    max_conf_num = 1
"""


def cni_config(rundir: Path) -> dict[str, object]:
    """One bridge ``cni0`` (the pods' gateway) with host-local IPAM whose data is in the run dir."""
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": str(rundir / "cni" / "ipam"),
    }
    bridge = {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "ipam": ipam,
    }
    return {"cniVersion": "1.0.0", "name": "bento-rollout", "plugins": [bridge]}


def kubelet_config(rundir: Path, pki: Path, cgroup_root: str) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{rundir}/containerd.sock",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": True,
        "failCgroupV1": False,  # 1.34 only warns on cgroup v1; 1.35+ refuse it unless this is false
        "failSwapOn": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "address": "0.0.0.0",  # inside the node netns
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "podLogsDir": str(rundir / "pod-logs"),
        "volumePluginDir": str(rundir / "kubelet" / "volume-plugins"),
        # cluster DNS: CoreDNS on the node's address (dns.py); pods get none of the host's servers
        "clusterDNS": [NODE_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": "",
        "oomScoreAdj": 0,  # (lowering it is not permitted here)
        "imageGCHighThresholdPercent": 100,  # never garbage-collect the imported images
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "serializeImagePulls": False,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "maxPods": 50,
    }


def kube_proxy_config(kubeconfig: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": CLUSTER_CIDR,
        "nodePortAddresses": ["primary"],
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "oomScoreAdj": 0,
        # Leave the conntrack table alone (its size is not per network namespace).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s"},
    }
