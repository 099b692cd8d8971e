package manifest

import (
	"fmt"
	"io"
	"net"
	"path"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ServiceAccount is the identity of the DaemonSet's pods.
const ServiceAccount = "vipd"

// labels of every vipd pod; component tells the static pods from the
// DaemonSet's.
func labels(component string) map[string]string {
	return map[string]string{"app.kubernetes.io/name": "vipd", "app.kubernetes.io/component": component}
}

// env is the agent's configuration: kube-vip's variable names where vipd
// reads them, so the manifest reads like kube-vip's; VIPD_ names for what
// only vipd has.
func (o Options) env(inCluster bool) []corev1.EnvVar {
	var env []corev1.EnvVar
	add := func(name, value string) { env = append(env, corev1.EnvVar{Name: name, Value: value}) }
	if o.Address != "" {
		add("address", o.Address)
	}
	if o.Interface != "" {
		add("vip_interface", o.Interface)
	}
	if o.ServicesInterface != "" {
		add("vip_servicesinterface", o.ServicesInterface)
	}
	add("vip_arp", strconv.FormatBool(o.ARP))
	add("cp_enable", strconv.FormatBool(o.ControlPlane))
	add("cp_namespace", o.Namespace)
	add("VIPD_AGENT_NAMESPACE", o.AgentNamespace)
	add("svc_enable", strconv.FormatBool(o.Services))
	if o.Services {
		add("svc_election", strconv.FormatBool(o.ServiceElection))
		add("svc_leasename", o.ServiceLeaseName)
	}
	add("vip_leaderelection", strconv.FormatBool(o.LeaderElection))
	add("vip_leasename", o.LeaseName)
	add("vip_leaseduration", o.LeaseDuration)
	add("vip_renewdeadline", o.RenewDeadline)
	add("vip_retryperiod", o.RetryPeriod)
	env = append(env, corev1.EnvVar{Name: "vip_nodename", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}})
	if !inCluster {
		add("k8s_config_file", o.Kubeconfig)
	}
	if o.MetricsAddr != "" {
		add("prometheus_server", o.MetricsAddr)
	}
	add("VIPD_HEALTH_ADDR", o.HealthAddr)
	if inCluster {
		add("VIPD_HEARTBEAT_KEY_SECRET", o.HeartbeatSecret)
	} else {
		add("VIPD_HEARTBEAT_KEY_FILE", o.HeartbeatKeyFile)
	}
	return env
}

// container is vipd's container: the capabilities it uses and no others,
// a read-only root, probes on the health address, requests from the
// benchmarks (38 MB resident with 200 Services, 57 MB with 1,000).
func (o Options) container(inCluster bool) corev1.Container {
	no := false
	yes := true
	root := int64(0) // capabilities are only effective for root without ambient ones
	c := corev1.Container{
		Name:            "vipd",
		Image:           o.Image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args:            []string{"manager"},
		Env:             o.env(inCluster),
		Ports: []corev1.ContainerPort{
			{Name: "heartbeat", ContainerPort: int32(o.HeartbeatPort), Protocol: corev1.ProtocolUDP},
			{Name: "health", ContainerPort: o.healthPort(), Protocol: corev1.ProtocolTCP},
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("50m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			},
			// No CPU limit: throttling would delay renewals and takeovers.
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
		},
		SecurityContext: &corev1.SecurityContext{
			Capabilities: &corev1.Capabilities{
				// NET_ADMIN: VIPs and nftables rules (netlink); NET_RAW:
				// gratuitous ARP and neighbour advertisements (packet sockets).
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
			RunAsUser:                &root,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler:     o.probe("/healthz"),
			PeriodSeconds:    10,
			TimeoutSeconds:   3,
			FailureThreshold: 3,
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:     o.probe("/readyz"),
			PeriodSeconds:    5,
			TimeoutSeconds:   3,
			FailureThreshold: 2,
		},
	}
	if o.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(o.MetricsAddr); err == nil {
			if p, err := strconv.ParseInt(port, 10, 32); err == nil {
				c.Ports = append(c.Ports, corev1.ContainerPort{Name: "metrics", ContainerPort: int32(p), Protocol: corev1.ProtocolTCP})
			}
		}
	}
	return c
}

func (o Options) probe(p string) corev1.ProbeHandler {
	return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
		Host: o.healthHost(), Path: p, Port: intstr.FromInt32(o.healthPort()), Scheme: corev1.URISchemeHTTP}}
}

// podSpec is what the static pod and the DaemonSet's pods share.
func (o Options) podSpec(inCluster bool) corev1.PodSpec {
	grace := int64(10) // the agent steps down in well under a second
	return corev1.PodSpec{
		HostNetwork:                   true,
		PriorityClassName:             "system-node-critical",
		TerminationGracePeriodSeconds: &grace,
		Containers:                    []corev1.Container{o.container(inCluster)},
	}
}

// hostFile mounts a file of the host read-only: a volume for its
// directory (created if missing, so the pod starts before the file
// exists) or for the file itself.
func hostMount(spec *corev1.PodSpec, name, hostPath string, typ corev1.HostPathType) {
	spec.Volumes = append(spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
		HostPath: &corev1.HostPathVolumeSource{Path: hostPath, Type: &typ}}})
	c := &spec.Containers[0]
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: name, MountPath: hostPath, ReadOnly: true})
}

// Pod writes the static pod for a control-plane node.
func Pod(w io.Writer, o Options) error {
	if err := o.check("pod"); err != nil {
		return err
	}
	spec := o.podSpec(false)
	hostMount(&spec, "kubeconfig", o.Kubeconfig, corev1.HostPathFile)
	// The directory, not the file: no key exists at kubeadm init, and the
	// agent picks the key up when it appears.
	hostMount(&spec, "heartbeat-key", path.Dir(o.HeartbeatKeyFile), corev1.HostPathDirectoryOrCreate)
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "vipd", Namespace: o.Namespace, Labels: labels("control-plane-vip")},
		Spec:       spec,
	}
	header := fmt.Sprintf(`vipd as a static pod: copy to /etc/kubernetes/manifests/vipd.yaml on every
control-plane node before kubeadm init / join --control-plane.
Generated by: vipd %s
Image: build it with make image and load it on each node
(ctr -n k8s.io images import vipd.tar), or push it to your registry and
pass --image. It reads the kubeconfig %s from the host; on the
first node during kubeadm init (Kubernetes 1.29 or later) pass
--kubeconfig /etc/kubernetes/super-admin.conf, and switch back once the
cluster is up. The heartbeat key is read from %s on the
host (see docs/heartbeat.md); until it exists the agents elect through
Leases only.`, strings.Join(o.Args, " "), o.Kubeconfig, o.HeartbeatKeyFile)
	return write(w, header, pod)
}

// DaemonSet writes the DaemonSet for the nodes that run no static pod.
func DaemonSet(w io.Writer, o Options) error {
	if err := o.check("daemonset"); err != nil {
		return err
	}
	spec := o.podSpec(o.InCluster)
	if o.InCluster {
		spec.ServiceAccountName = ServiceAccount
	} else {
		hostMount(&spec, "kubeconfig", o.Kubeconfig, corev1.HostPathFile)
	}
	const cpLabel = "node-role.kubernetes.io/control-plane"
	switch {
	case o.Taint:
		spec.NodeSelector = map[string]string{cpLabel: ""}
		spec.Tolerations = []corev1.Toleration{{Key: cpLabel, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
	case o.AllNodes:
		spec.Tolerations = []corev1.Toleration{{Key: cpLabel, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
	default:
		spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: cpLabel, Operator: corev1.NodeSelectorOpDoesNotExist}},
			}}},
		}}
	}
	one := intstr.FromInt32(1)
	ls := labels("service-vips")
	ds := &appsv1.DaemonSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: metav1.ObjectMeta{Name: "vipd", Namespace: o.AgentNamespace, Labels: ls},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: ls},
			// One node at a time; each hands its VIPs over on SIGTERM.
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxUnavailable: &one}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: ls}, Spec: spec},
		},
	}
	where := "every node but the control-plane ones, which run the static pod (vipd manifest pod)"
	if o.Taint {
		where = "the control-plane nodes only"
	} else if o.AllNodes {
		where = "every node"
	}
	header := fmt.Sprintf(`vipd as a DaemonSet on %s.
Generated by: vipd %s
Apply the RBAC first (vipd manifest rbac). Image: build it with make image
and load it on each node (ctr -n k8s.io images import vipd.tar), or push it
to your registry and pass --image. The heartbeat key is the Secret %s/%s
(see docs/heartbeat.md); until it exists the agents elect through Leases only.`,
		where, strings.Join(o.Args, " "), o.AgentNamespace, o.HeartbeatSecret)
	return write(w, header, ds)
}
