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
	u, err := c.AddUser(user, groups...)
	if err != nil {
		return nil, err
	}
	return c.KubeconfigFor(u, server)
}

// User is an identity the API server authenticates by client certificate:
// the certificate's CN is the user name, its O entries the groups. Unlike
// the agent user it has no rights of its own; RBAC decides what it may do.
type User struct {
	Name   string
	Groups []string

	cfg *rest.Config
}

// ServiceAccountUser is the identity a ServiceAccount's token would give:
// what RBAC bindings to a ServiceAccount subject apply to.
func ServiceAccountUser(namespace, name string) (string, []string) {
	return "system:serviceaccount:" + namespace + ":" + name,
		[]string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
}

// AddUser issues a client certificate for name in groups.
func (c *ControlPlane) AddUser(name string, groups ...string) (*User, error) {
	u, err := c.env.AddUser(envtest.User{Name: name, Groups: groups}, &rest.Config{})
	if err != nil {
		return nil, fmt.Errorf("adding user %s to control plane: %w", name, err)
	}
	return &User{Name: name, Groups: groups, cfg: u.Config()}, nil
}

// Config is a client config for the user on the host. Each call returns a
// fresh copy.
func (u *User) Config() *rest.Config { return rest.CopyConfig(u.cfg) }

// KubeconfigFor renders a kubeconfig for the user whose cluster is reached
// at server, like Kubeconfig does for the agent user.
func (c *ControlPlane) KubeconfigFor(u *User, server string) ([]byte, error) {
	return kubeconfig(server, u.Name, u.cfg)
}
