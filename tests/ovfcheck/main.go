// ferry-ovfcheck: asks the govmomi vSphere simulator's OvfManager.CreateImportSpec about an
// OVF descriptor, the call vCenter's "Deploy OVF Template" makes, and prints the result as
// one JSON object: errors, warnings, the import spec's hardware and disk files, and the
// descriptor as govmomi's ovf package reads it (transport, properties).
//
// Build offline (Debian golang-go + golang-github-vmware-govmomi-dev):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o ferry-ovfcheck .
//
// Usage: ferry-ovfcheck DESCRIPTOR.ovf
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"os"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/ovf"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

type property struct {
	Key              string `json:"key"`
	Type             string `json:"type"`
	Password         bool   `json:"password"`
	UserConfigurable bool   `json:"user_configurable"`
	Label            string `json:"label"`
	Description      string `json:"description"`
	Default          string `json:"default"`
}

type report struct {
	Errors      []string   `json:"errors"`
	Warnings    []string   `json:"warnings"`
	GuestID     string     `json:"guest_id"`
	Version     string     `json:"version"`
	NumCPUs     int32      `json:"num_cpus"`
	MemoryMB    int64      `json:"memory_mb"`
	Devices     []string   `json:"devices"`
	DiskKB      []int64    `json:"disk_capacity_kb"`
	FileItems   []string   `json:"file_items"`
	Transport   string     `json:"transport"`
	OSID        int16      `json:"os_id"`
	Properties  []property `json:"properties"`
	DiskFormat  string     `json:"disk_format"`
	Populated   int        `json:"disk_populated"`
	Capacity    string     `json:"disk_capacity"`
	NetworkName string     `json:"network"`
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func boolean(p *bool) bool { return p != nil && *p }

func check(ctx context.Context, c *vim25.Client, descriptor string) (*report, error) {
	env, err := ovf.Unmarshal(strings.NewReader(descriptor))
	if err != nil {
		return nil, fmt.Errorf("ovf.Unmarshal: %v", err)
	}
	r := &report{Errors: []string{}, Warnings: []string{}}
	vs := env.VirtualSystem
	if vs == nil || len(vs.VirtualHardware) != 1 {
		return nil, fmt.Errorf("expected one VirtualSystem with one VirtualHardwareSection")
	}
	r.Transport = str(vs.VirtualHardware[0].Transport)
	if len(vs.OperatingSystem) > 0 {
		r.OSID = vs.OperatingSystem[0].ID
	}
	var mapping []types.KeyValue
	for _, ps := range vs.Product {
		for _, p := range ps.Property {
			r.Properties = append(r.Properties, property{
				Key: p.Key, Type: p.Type, Password: boolean(p.Password),
				UserConfigurable: boolean(p.UserConfigurable),
				Label:            str(p.Label), Description: str(p.Description), Default: str(p.Default),
			})
			mapping = append(mapping, types.KeyValue{Key: p.Key, Value: str(p.Default)})
		}
	}
	if env.Disk != nil && len(env.Disk.Disks) == 1 {
		d := env.Disk.Disks[0]
		r.DiskFormat = str(d.Format)
		r.Capacity = d.Capacity
		if d.PopulatedSize != nil {
			r.Populated = *d.PopulatedSize
		}
	}

	finder := find.NewFinder(c)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	pools, err := finder.ResourcePoolList(ctx, "*/Resources")
	if err != nil || len(pools) == 0 {
		return nil, fmt.Errorf("no resource pool: %v", err)
	}
	pool := pools[0]
	ds, err := finder.DefaultDatastore(ctx)
	if err != nil {
		return nil, err
	}
	net, err := finder.Network(ctx, "VM Network")
	if err != nil {
		return nil, err
	}
	r.NetworkName = "VM Network"
	cisp := types.OvfCreateImportSpecParams{
		EntityName:      "ferry-agent",
		PropertyMapping: mapping,
		NetworkMapping: []types.OvfNetworkMapping{
			{Name: "VM Network", Network: net.Reference()},
		},
	}
	res, err := ovf.NewManager(c).CreateImportSpec(ctx, descriptor, pool, ds, cisp)
	if err != nil {
		return nil, fmt.Errorf("CreateImportSpec: %v", err)
	}
	for _, e := range res.Error {
		r.Errors = append(r.Errors, e.LocalizedMessage)
	}
	for _, w := range res.Warning {
		r.Warnings = append(r.Warnings, w.LocalizedMessage)
	}
	spec, ok := res.ImportSpec.(*types.VirtualMachineImportSpec)
	if !ok {
		return nil, fmt.Errorf("no VirtualMachineImportSpec in the result")
	}
	r.GuestID = spec.ConfigSpec.GuestId
	r.Version = spec.ConfigSpec.Version
	r.NumCPUs = spec.ConfigSpec.NumCPUs
	r.MemoryMB = spec.ConfigSpec.MemoryMB
	devices := object.VirtualDeviceList{}
	for _, dc := range spec.ConfigSpec.DeviceChange {
		devices = append(devices, dc.GetVirtualDeviceConfigSpec().Device)
	}
	for _, d := range devices {
		r.Devices = append(r.Devices, devices.Type(d))
		if disk, ok := d.(*types.VirtualDisk); ok {
			r.DiskKB = append(r.DiskKB, disk.CapacityInKB)
		}
	}
	for _, f := range res.FileItem {
		r.FileItems = append(r.FileItems, fmt.Sprintf("%s %d", f.Path, f.Size))
	}
	return r, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ferry-ovfcheck DESCRIPTOR.ovf")
		os.Exit(2)
	}
	b, err := ioutil.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var out *report
	err = simulator.VPX().Run(func(ctx context.Context, c *vim25.Client) error {
		r, err := check(ctx, c, string(b))
		out = r
		return err
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-ovfcheck:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		os.Exit(1)
	}
}
