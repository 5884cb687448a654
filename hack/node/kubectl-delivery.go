// kubectl-delivery: the init container that training-operator v1.9 adds to an MPIJob's launcher
// (its --mpi-kubectl-delivery-image; the default kubeflow/kubectl-delivery cannot be pulled here).
// As upstream's does, it copies kubectl into $TARGET_DIR (the launcher's /opt/kube, where the
// operator's kubexec.sh runs it as mpirun's rsh agent), then waits until every worker named in the
// hostfile (/etc/mpi/hostfile, "<pod> slots=N" lines) is Ready, so that mpirun never execs into a
// pod that is not running yet. Standard library only; kubectl talks to the apiserver with the
// pod's service account (the launcher Role the operator makes allows get/list/watch on pods).
// hack/install-tools.sh builds it static, beside kubectl, into an image with nothing else.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const (
	kubectl  = "/kubectl"
	hostfile = "/etc/mpi/hostfile"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "kubectl-delivery: ERROR: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	target := os.Getenv("TARGET_DIR")
	namespace := os.Getenv("NAMESPACE")
	if target == "" || namespace == "" {
		return fmt.Errorf("TARGET_DIR and NAMESPACE must be set (the training-operator sets both)")
	}
	if err := copyExecutable(kubectl, filepath.Join(target, "kubectl")); err != nil {
		return err
	}
	pods, err := workers(hostfile)
	if err != nil {
		return err
	}
	// kubectl's discovery cache: the image has no writable HOME.
	env := append(os.Environ(), "KUBECACHEDIR="+filepath.Join(target, ".kube-cache"))
	self, _ := os.Hostname() // a GPU launcher is in its own hostfile: not something to wait for
	for _, pod := range pods {
		if pod == self {
			continue
		}
		for attempt := 1; ; attempt++ {
			cmd := exec.Command(kubectl, "wait", "--namespace", namespace, "--for=condition=Ready",
				"--timeout=60s", "pod/"+pod)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err == nil {
				fmt.Printf("kubectl-delivery: %s is ready\n", pod)
				break
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			fmt.Printf("kubectl-delivery: waiting for %s (attempt %d): %s\n", pod, attempt, lines[len(lines)-1])
			time.Sleep(2 * time.Second)
		}
	}
	fmt.Printf("kubectl-delivery: kubectl in %s; %d worker(s) ready\n", target, len(pods))
	return nil
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

func workers(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("the MPIJob's hostfile: %w", err)
	}
	defer f.Close()
	var pods []string
	scan := bufio.NewScanner(f)
	for scan.Scan() {
		if fields := strings.Fields(scan.Text()); len(fields) > 0 && !strings.HasPrefix(fields[0], "#") {
			pods = append(pods, fields[0])
		}
	}
	return pods, scan.Err()
}
