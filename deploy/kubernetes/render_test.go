package kubernetes

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// rendered is one kustomization's output, decoded into the Kubernetes API types.
type rendered struct {
	deployment     *appsv1.Deployment
	service        *corev1.Service
	configMap      *corev1.ConfigMap
	serviceAccount *corev1.ServiceAccount
	pdb            *policyv1.PodDisruptionBudget
	hpa            *autoscalingv2.HorizontalPodAutoscaler
	networkPolicy  *networkingv1.NetworkPolicy
}

// kinds are the objects the manifests may contain, by apiVersion and kind. Anything else
// (a Secret above all: secrets are referenced, never shipped) fails the test.
var kinds = map[string]func(*rendered) any{
	"apps/v1/Deployment": func(r *rendered) any { r.deployment = new(appsv1.Deployment); return r.deployment },
	"v1/Service":         func(r *rendered) any { r.service = new(corev1.Service); return r.service },
	"v1/ConfigMap":       func(r *rendered) any { r.configMap = new(corev1.ConfigMap); return r.configMap },
	"v1/ServiceAccount": func(r *rendered) any {
		r.serviceAccount = new(corev1.ServiceAccount)
		return r.serviceAccount
	},
	"policy/v1/PodDisruptionBudget": func(r *rendered) any { r.pdb = new(policyv1.PodDisruptionBudget); return r.pdb },
	"autoscaling/v2/HorizontalPodAutoscaler": func(r *rendered) any {
		r.hpa = new(autoscalingv2.HorizontalPodAutoscaler)
		return r.hpa
	},
	"networking.k8s.io/v1/NetworkPolicy": func(r *rendered) any {
		r.networkPolicy = new(networkingv1.NetworkPolicy)
		return r.networkPolicy
	},
}

// render runs kustomize on dir (relative to this module) and decodes every object strictly:
// a field the API type does not have (a typo, a field at the wrong level) is an error, where
// kubectl would drop it or the API server would refuse the object only at apply time.
func render(t *testing.T, dir string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := new(rendered)
	seen := map[string]bool{}
	for _, res := range m.Resources() {
		key := res.GetApiVersion() + "/" + res.GetKind()
		newObj, ok := kinds[key]
		if !ok {
			t.Errorf("%s: unexpected object %s %s (secrets are referenced, never part of the manifests)", dir, key, res.GetName())
			continue
		}
		if seen[key] {
			t.Errorf("%s: more than one %s", dir, key)
		}
		seen[key] = true
		b, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s %s: %v", dir, key, res.GetName(), err)
		}
		if err := yaml.UnmarshalStrict(b, newObj(r)); err != nil {
			t.Errorf("%s: %s %s does not decode strictly: %v", dir, key, res.GetName(), err)
		}
	}
	for key := range kinds {
		if !seen[key] {
			t.Errorf("%s: no %s rendered", dir, key)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return r
}

func TestBase(t *testing.T) {
	r := render(t, "base")
	checkRendered(t, r)
	if r.deployment.Namespace != "" {
		t.Errorf("the base sets namespace %q; leave it to overlays", r.deployment.Namespace)
	}
}

func TestProductionOverlay(t *testing.T) {
	base, prod := render(t, "base"), render(t, "overlays/production")
	checkRendered(t, prod)

	if prod.deployment.Namespace == "" {
		t.Error("production: no namespace")
	}
	if got, was := *prod.deployment.Spec.Replicas, *base.deployment.Spec.Replicas; got <= was {
		t.Errorf("production: replicas %d, not above the base's %d", got, was)
	}
	if got, was := *prod.hpa.Spec.MinReplicas, *base.hpa.Spec.MinReplicas; got <= was {
		t.Errorf("production: HPA minReplicas %d, not above the base's %d", got, was)
	}
	if *prod.hpa.Spec.MinReplicas != *prod.deployment.Spec.Replicas {
		t.Errorf("production: HPA minReplicas %d, Deployment replicas %d: the HPA would change the count at once",
			*prod.hpa.Spec.MinReplicas, *prod.deployment.Spec.Replicas)
	}

	bc, pc := sshcaContainer(t, base.deployment), sshcaContainer(t, prod.deployment)
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		b, p := bc.Resources.Requests[name], pc.Resources.Requests[name]
		if p.Cmp(b) <= 0 {
			t.Errorf("production: %s request %s, not above the base's %s", name, p.String(), b.String())
		}
	}
	if p, b := pc.Resources.Limits[corev1.ResourceMemory], bc.Resources.Limits[corev1.ResourceMemory]; p.Cmp(b) <= 0 {
		t.Errorf("production: memory limit %s, not above the base's %s", p.String(), b.String())
	}

	repo, tag := splitImage(pc.Image)
	if baseRepo, baseTag := splitImage(bc.Image); repo != baseRepo || tag == baseTag {
		t.Errorf("production image %s: want %s with a tag other than the base's %q", pc.Image, baseRepo, baseTag)
	}
	if tag == "" || tag == "latest" || tag == "dev" {
		t.Errorf("production image %s: pin a released tag", pc.Image)
	}
}

// splitImage returns an image reference's repository and tag.
func splitImage(ref string) (repo, tag string) {
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i+1:]
	}
	return ref, ""
}

func sshcaContainer(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	for i, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "sshca" {
			return &d.Spec.Template.Spec.Containers[i]
		}
	}
	t.Fatalf("Deployment %s has no container named sshca", d.Name)
	return nil
}

// checkRendered checks what every rendering must hold: the pod's security context, the probes,
// resources, the Secrets it references, how the other objects point at the Deployment, and the
// embedded sshca configuration against the mounts.
func checkRendered(t *testing.T, r *rendered) {
	t.Helper()
	d := r.deployment
	pod := d.Spec.Template.Spec
	podLabels := d.Spec.Template.Labels

	if sel := d.Spec.Selector.MatchLabels; !subset(sel, podLabels) || len(sel) == 0 {
		t.Errorf("Deployment selector %v does not select its own pods %v", sel, podLabels)
	}

	// Security context: the pod's, then every container's (init containers too).
	psc := pod.SecurityContext
	if psc == nil || !isTrue(psc.RunAsNonRoot) {
		t.Error("pod securityContext: runAsNonRoot must be true")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod securityContext: seccompProfile must be RuntimeDefault")
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Error("pod securityContext: runAsUser 0")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("pod: automountServiceAccountToken must be false (sshca does not use the Kubernetes API)")
	}
	if pod.ServiceAccountName != r.serviceAccount.Name {
		t.Errorf("pod: serviceAccountName %q, rendered ServiceAccount %q", pod.ServiceAccountName, r.serviceAccount.Name)
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Error("pod: shares a host namespace")
	}
	all := append(slices.Clone(pod.InitContainers), pod.Containers...)
	for _, c := range all {
		checkContainerSecurity(t, c, psc)
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("container %s: needs cpu and memory requests and a memory limit", c.Name)
		}
		if _, tag := splitImage(c.Image); tag == "" || tag == "latest" {
			t.Errorf("container %s: image %q has no pinned tag", c.Name, c.Image)
		}
	}

	// sshca serve collects garbage with GOGC=400 unless told otherwise (cmd/sshca/gc.go): its
	// heap may grow to five times the live one, and the soft memory limit taken from the
	// container's is what makes the collector work harder before the kernel's OOM killer would.
	sc := sshcaContainer(t, d)
	memLimit := false
	for _, e := range sc.Env {
		if e.Name == "GOMEMLIMIT" && e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil &&
			e.ValueFrom.ResourceFieldRef.Resource == "limits.memory" && e.ValueFrom.ResourceFieldRef.ContainerName == "sshca" &&
			e.ValueFrom.ResourceFieldRef.Divisor.IsZero() {
			memLimit = true
		}
	}
	if !memLimit {
		t.Error("container sshca: GOMEMLIMIT must come from its own limits.memory (resourceFieldRef, no divisor: bytes), the cap of serve's GOGC=400 heap")
	}

	// Volumes: Secrets are referenced by name; no key material sits in a ConfigMap.
	secrets := map[string]bool{}
	for _, v := range pod.Volumes {
		switch {
		case v.Secret != nil:
			if v.Secret.SecretName == "" || v.Secret.Optional != nil && *v.Secret.Optional {
				t.Errorf("volume %s: a Secret reference must name its Secret and not be optional", v.Name)
			}
			if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o007 != 0 {
				t.Errorf("volume %s: Secret files must not be world-readable (defaultMode)", v.Name)
			}
			secrets[v.Secret.SecretName] = true
		case v.ConfigMap != nil:
			if v.ConfigMap.Name != r.configMap.Name {
				t.Errorf("volume %s: ConfigMap %q, rendered %q", v.Name, v.ConfigMap.Name, r.configMap.Name)
			}
		case v.EmptyDir != nil:
		default:
			t.Errorf("volume %s: only Secrets, the ConfigMap and emptyDirs are expected", v.Name)
		}
	}
	for _, want := range []string{"sshca-tls", "sshca-ca-keys", "sshca-redis", "sshca-audit"} {
		if !secrets[want] {
			t.Errorf("no volume references the Secret %s", want)
		}
	}

	c := sshcaContainer(t, d)
	cfg := checkConfig(t, r.configMap, &pod, c)
	port := containerPort(t, c, "https")
	if cfg.listenPort != port.ContainerPort {
		t.Errorf("config listens on port %d, the container port https is %d", cfg.listenPort, port.ContainerPort)
	}
	// diag_listen: its own port, reachable from other pods, probed and scraped there.
	diag := containerPort(t, c, "diag")
	if cfg.diagPort != diag.ContainerPort || !cfg.diagAllInterfaces {
		t.Errorf("diag_listen port %d (all interfaces: %v), container port diag %d: want them equal, on all interfaces so the kubelet and Prometheus reach it",
			cfg.diagPort, cfg.diagAllInterfaces, diag.ContainerPort)
	}
	ann := d.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(int(diag.ContainerPort)) || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations %v: want prometheus.io/scrape true, port %d, path /metrics", ann, diag.ContainerPort)
	}
	for _, sp := range r.service.Spec.Ports {
		if resolvePort(t, c, sp.TargetPort) == diag.ContainerPort {
			t.Errorf("Service port %s exposes the diagnostics port", sp.Name)
		}
	}
	if !allowsIngress(t, r.networkPolicy, c, diag.ContainerPort) {
		t.Errorf("NetworkPolicy does not admit the diagnostics port %d (Prometheus)", diag.ContainerPort)
	}
	for _, rule := range r.networkPolicy.Spec.Ingress {
		for _, p := range rule.Ports {
			if (p.Port == nil || resolvePort(t, c, *p.Port) == diag.ContainerPort) && len(rule.From) == 0 {
				t.Errorf("NetworkPolicy admits everyone to the diagnostics port: its /readyz names internal addresses")
			}
		}
	}
	port = diag
	scheme := corev1.URISchemeHTTP // diag_listen is plain HTTP
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"startup", c.StartupProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: want GET %s", p.name, p.path)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || g.Scheme != scheme || resolvePort(t, c, g.Port) != port.ContainerPort {
			t.Errorf("%s probe: %s %s on port %s; want %s %s on %d", p.name, g.Scheme, g.Path, g.Port.String(), scheme, p.path, port.ContainerPort)
		}
	}
	// /readyz gives its checks 1s; a shorter probe timeout marks a slow but healthy replica failed.
	if rp := c.ReadinessProbe; rp != nil && rp.TimeoutSeconds < 2 {
		t.Errorf("readiness probe: timeoutSeconds %d, want at least 2 (/readyz may take 1s)", rp.TimeoutSeconds)
	}

	port = containerPort(t, c, "https")
	// Service, PDB, HPA and NetworkPolicy all point at these pods and this port.
	if !subset(r.service.Spec.Selector, podLabels) || len(r.service.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not select the pods %v", r.service.Spec.Selector, podLabels)
	}
	for _, sp := range r.service.Spec.Ports {
		if resolvePort(t, c, sp.TargetPort) != port.ContainerPort {
			t.Errorf("Service port %s: targetPort %s is not the container's https port", sp.Name, sp.TargetPort.String())
		}
	}
	if sel := r.pdb.Spec.Selector; sel == nil || !subset(sel.MatchLabels, podLabels) || len(sel.MatchLabels) == 0 {
		t.Errorf("PodDisruptionBudget does not select the pods %v", podLabels)
	}
	if r.pdb.Spec.MinAvailable == nil || r.pdb.Spec.MinAvailable.Type != intstr.Int {
		t.Error("PodDisruptionBudget: want an integer minAvailable")
	} else if minAvail := r.pdb.Spec.MinAvailable.IntVal; minAvail < 1 || minAvail >= *r.hpa.Spec.MinReplicas {
		t.Errorf("PodDisruptionBudget minAvailable %d: want at least 1 and below the HPA's minReplicas %d (else a node drain blocks)",
			minAvail, *r.hpa.Spec.MinReplicas)
	}
	if ref := r.hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != d.Name || ref.APIVersion != "apps/v1" {
		t.Errorf("HPA targets %s %s %s, want apps/v1 Deployment %s", ref.APIVersion, ref.Kind, ref.Name, d.Name)
	}
	if *r.hpa.Spec.MinReplicas > r.hpa.Spec.MaxReplicas || len(r.hpa.Spec.Metrics) == 0 {
		t.Error("HPA: minReplicas above maxReplicas, or no metric")
	}
	np := r.networkPolicy
	if !subset(np.Spec.PodSelector.MatchLabels, podLabels) || len(np.Spec.PodSelector.MatchLabels) == 0 {
		t.Errorf("NetworkPolicy selects %v, not the pods %v", np.Spec.PodSelector.MatchLabels, podLabels)
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Errorf("NetworkPolicy policyTypes %v: want Ingress and Egress", np.Spec.PolicyTypes)
	}
	if !allowsIngress(t, np, c, port.ContainerPort) {
		t.Errorf("NetworkPolicy does not admit the API port %d", port.ContainerPort)
	}
	for _, want := range []int32{53, 6379, 443} {
		if !allowsEgress(np, want) {
			t.Errorf("NetworkPolicy: no egress to port %d (DNS, Redis, OIDC issuers)", want)
		}
	}
}

func checkContainerSecurity(t *testing.T, c corev1.Container, pod *corev1.PodSecurityContext) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("container %s: no securityContext", c.Name)
		return
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Errorf("container %s: readOnlyRootFilesystem must be true", c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container %s: allowPrivilegeEscalation must be false", c.Name)
	}
	if isTrue(sc.Privileged) {
		t.Errorf("container %s: privileged", c.Name)
	}
	if sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot || sc.RunAsNonRoot == nil && (pod == nil || !isTrue(pod.RunAsNonRoot)) {
		t.Errorf("container %s: runAsNonRoot must be true", c.Name)
	}
	if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
		t.Errorf("container %s: runAsUser 0", c.Name)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && pod != nil {
		seccomp = pod.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container %s: seccompProfile must be RuntimeDefault", c.Name)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("container %s: capabilities must drop ALL and add none", c.Name)
	}
}

func isTrue(b *bool) bool { return b != nil && *b }

// subset reports whether every label of sel is in labels.
func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func containerPort(t *testing.T, c *corev1.Container, name string) corev1.ContainerPort {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("container %s has no port named %s", c.Name, name)
	return corev1.ContainerPort{}
}

// resolvePort turns a named or numbered port of c into its number (0 when c has no such port).
func resolvePort(t *testing.T, c *corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

func allowsIngress(t *testing.T, np *networkingv1.NetworkPolicy, c *corev1.Container, port int32) bool {
	for _, rule := range np.Spec.Ingress {
		if len(rule.Ports) == 0 {
			return true
		}
		for _, p := range rule.Ports {
			if p.Port == nil || resolvePort(t, c, *p.Port) == port {
				return true
			}
		}
	}
	return false
}

func allowsEgress(np *networkingv1.NetworkPolicy, port int32) bool {
	for _, rule := range np.Spec.Egress {
		if len(rule.Ports) == 0 {
			return true
		}
		for _, p := range rule.Ports {
			if p.Port == nil || p.Port.Type == intstr.Int && p.Port.IntVal == port {
				return true
			}
		}
	}
	return false
}

// mountFor finds the volume mount of c that holds file, and the volume behind it.
func mountFor(c *corev1.Container, volumes []corev1.Volume, file string) (*corev1.VolumeMount, *corev1.Volume, error) {
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if strings.HasPrefix(path.Clean(file), path.Clean(m.MountPath)+"/") && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return nil, nil, fmt.Errorf("%s is on no volume of container %s (the root filesystem is read-only and holds no configuration)", file, c.Name)
	}
	for i, v := range volumes {
		if v.Name == best.Name {
			return best, &volumes[i], nil
		}
	}
	return nil, nil, fmt.Errorf("%s: mount %s names no volume", file, best.Name)
}
