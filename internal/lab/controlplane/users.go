package controlplane

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

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
		return nil, fmt.Errorf("adding user %s to the control plane: %w", name, err)
	}
	return &User{Name: name, Groups: groups, cfg: u.Config()}, nil
}

// Config is a client config for the user on the host. Each call returns a
// fresh copy.
func (u *User) Config() *rest.Config { return rest.CopyConfig(u.cfg) }

// Kubeconfig renders a kubeconfig for the user whose cluster is reached at
// server, like ControlPlane.Kubeconfig does for the agent user.
func (c *ControlPlane) KubeconfigFor(u *User, server string) ([]byte, error) {
	return kubeconfig(server, u.Name, c.agent.CAData, u.cfg.CertData, u.cfg.KeyData)
}

func kubeconfig(server, user string, ca, cert, key []byte) ([]byte, error) {
	const name = "vipd-lab"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{
		Server:                   server,
		TLSServerName:            TLSServerName,
		CertificateAuthorityData: ca,
	}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user}
	cfg.CurrentContext = name
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("writing kubeconfig for %s at %s: %w", user, server, err)
	}
	return out, nil
}
