// Package e2e drives the approvers' web console (package ui) in a real headless Chromium
// against a real `sshca dev`, built from this checkout. It is a module of its own so that
// chromedp stays out of sshca's dependencies; `go tool task test` runs it, and `go tool task
// screenshots` runs it with -screenshots to write the pages' pictures under docs/.
package e2e
