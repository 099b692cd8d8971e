package controlplane

import (
	"fmt"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// UserKubeconfig adds a user with the given groups (a client certificate;
// RBAC decides what it may do) and renders a kubeconfig for it that reaches
// the API server at server, as Kubeconfig does.
func (c *ControlPlane) UserKubeconfig(server, user string, groups ...string) ([]byte, error) {
	u, err := c.env.AddUser(envtest.User{Name: user, Groups: groups}, &rest.Config{})
	if err != nil {
		return nil, fmt.Errorf("adding user %s to control plane: %w", user, err)
	}
	return kubeconfig(server, user, u.Config())
}
