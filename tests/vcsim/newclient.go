package main

import (
	"context"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
)

// newClient logs in to the simulator's own listener (used once, at setup).
func newClient(ctx context.Context, sim *simulator.Server) (*vim25.Client, error) {
	c, err := govmomi.NewClient(ctx, sim.URL, true)
	if err != nil {
		return nil, err
	}
	return c.Client, nil
}
