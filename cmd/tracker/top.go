package main

import (
	"context"
	"io"
)

func runTop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return usagef("top: not implemented yet")
}
