// Package kubernetes holds the tests of sshca's deployment artifacts: the kustomize base and
// overlays beside this file, the Dockerfiles of deploy/docker and the repository's
// .dockerignore. It is a module of its own so that kustomize, the Kubernetes API types and
// BuildKit's parser stay out of the product's module graph; run it with
// `cd deploy/kubernetes && go test ./...` (the task `test` does).
package kubernetes
