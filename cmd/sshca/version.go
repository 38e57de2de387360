package main

// Set by the Dockerfiles with -ldflags "-X main.version=$VERSION -X main.commit=$COMMIT".
var version string
var commit string
