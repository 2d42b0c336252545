// ferry-vcsim: the govmomi vSphere simulator with what Ferry's tests need on top.
//
// Added here, in front of the simulator's own handler:
//   - QueryChangedDiskAreas (the simulator has none), with changed areas the test sets
//     through the control listener. Semantics of the real API: startOffset loop (each
//     answer covers at most -cbt-window bytes), changeId "*" returns allocated areas, and
//     an unknown changeId is an InvalidArgument fault.
//   - fault injection: expire every session, cut every connection after N bytes of
//     /folder data ("killed"), fail the next RemoveSnapshot_Task calls.
//   - the vAPI REST simulator (tagging) under /rest, which the model registers only when
//     asked; its session login accepts any password, so ours checks it. The /api spelling
//     of vSphere 7.0U2+ is translated to /rest here (-vapi chooses which exist).
//   - a barrier on CreateSnapshot_Task, so a test can prove that VMs run in parallel.
//
// The first line on stdout is JSON with the URL, credentials, control URL and datastore
// directory. The process exits when stdin closes, so it dies with the test that runs it.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // registers /rest (tagging) with the model
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

const user, password = "ferry", "ferry-secret"

type area struct{ Start, Len int64 }

type cbtDisk struct {
	prefix  string
	gen     int
	changes map[int][]area // generation -> areas changed in it
}

type state struct {
	mu     sync.Mutex
	disks  map[string]*cbtDisk // "vm-42/2000"
	window int64

	expired     map[string]bool
	expireAfter int64 // -1: off
	outageAfter int64 // -1: off
	outage      bool
	failRemove  int
	folderBytes int64
	currentTime int // CurrentTime calls: the client's session keep-alive

	// CreateSnapshot_Task barrier: the first holdN calls wait until holdN have arrived.
	holdN        int
	holdArrived  int
	holdRelease  chan struct{}
	holdTimedOut bool
	snapInFlight int // CreateSnapshot_Task calls inside the simulator or at the barrier
	snapMax      int
}

var st = &state{disks: map[string]*cbtDisk{}, expired: map[string]bool{}, expireAfter: -1, outageAfter: -1}

func main() {
	disks := flag.String("disks", "64M,32M", "disk sizes of DC0_H0_VM0")
	window := flag.Int64("cbt-window", 16<<20, "max bytes one QueryChangedDiskAreas answer covers")
	allVMs := flag.Bool("all-vms", false, "give every VM the -disks sizes, not only DC0_H0_VM0")
	vapiFlag := flag.String("vapi", "both", "vAPI REST spellings served: both, rest (/rest only), api (/api only), none (as ESXi)")
	flag.Parse()
	vapiMode = *vapiFlag
	log.SetOutput(ioutil.Discard)
	st.window = *window

	model := simulator.VPX()
	model.Autostart = true
	if err := model.Create(); err != nil {
		fatal(err)
	}
	model.Service.TLS = new(tls.Config)
	model.Service.RegisterEndpoints = true
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(user, password)}
	sim := model.Service.NewServer()
	mux := model.Service.ServeMux

	if err := setupDisks(sim, *disks, *allVMs); err != nil {
		fatal(err)
	}

	cert, err := selfSigned()
	if err != nil {
		fatal(err)
	}
	_ = sim
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		fatal(err)
	}
	ctl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	inner := mux
	go func() { _ = (&http.Server{Handler: front(inner), ErrorLog: log.New(ioutil.Discard, "", 0)}).Serve(ln) }()
	go func() { _ = http.Serve(ctl, control()) }()

	ds := simulator.Map.Any("Datastore").(*simulator.Datastore)
	sum := sha256.Sum256(cert.Certificate[0])
	info := map[string]interface{}{
		"url":        fmt.Sprintf("https://%s/sdk", ln.Addr()),
		"user":       user,
		"password":   password,
		"control":    fmt.Sprintf("http://%s", ctl.Addr()),
		"datastore":  ds.Name,
		"ds_dir":     ds.Info.GetDatastoreInfo().Url,
		"thumbprint": hex.EncodeToString(sum[:]),
	}
	line, _ := json.Marshal(info)
	fmt.Println(string(line))
	_, _ = io.Copy(ioutil.Discard, os.Stdin)
	model.Remove()
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "ferry-vcsim:", err)
	os.Exit(1)
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n * mult, err
}

// setupDisks gives DC0_H0_VM0 (or every VM) the requested disks, with capacityInBytes set
// (the model leaves it 0).
func setupDisks(sim *simulator.Server, spec string, allVMs bool) error {
	var sizes []int64
	for _, s := range strings.Split(spec, ",") {
		n, err := parseSize(s)
		if err != nil {
			return err
		}
		sizes = append(sizes, n)
	}
	ctx := context.Background()
	var vms []*simulator.VirtualMachine
	for _, e := range simulator.Map.All("VirtualMachine") {
		if v, ok := e.(*simulator.VirtualMachine); ok && (allVMs || v.Name == "DC0_H0_VM0") {
			vms = append(vms, v)
		}
	}
	if len(vms) == 0 {
		return fmt.Errorf("no DC0_H0_VM0 in the model")
	}
	c, err := newClient(ctx, sim)
	if err != nil {
		return err
	}
	for _, vm := range vms {
		if err := setupVMDisks(ctx, c, vm, sizes); err != nil {
			return fmt.Errorf("%s: %v", vm.Name, err)
		}
	}
	return nil
}

func setupVMDisks(ctx context.Context, c *vim25.Client, vm *simulator.VirtualMachine, sizes []int64) error {
	ovm := object.NewVirtualMachine(c, vm.Reference())
	devs, err := ovm.Device(ctx)
	if err != nil {
		return err
	}
	existing := devs.SelectByType((*types.VirtualDisk)(nil))
	for i := 1; i < len(sizes); i++ {
		ctrl, err := devs.FindDiskController("scsi")
		if err != nil {
			return err
		}
		dsRef := existing[0].(*types.VirtualDisk).Backing.(*types.VirtualDiskFlatVer2BackingInfo).Datastore
		disk := devs.CreateDisk(ctrl, *dsRef, "")
		disk.CapacityInKB = sizes[i] / 1024
		if err := ovm.AddDevice(ctx, disk); err != nil {
			return err
		}
		devs, _ = ovm.Device(ctx)
	}
	i := 0
	for _, d := range vm.Config.Hardware.Device {
		if disk, ok := d.(*types.VirtualDisk); ok && i < len(sizes) {
			disk.CapacityInKB = sizes[i] / 1024
			disk.CapacityInBytes = sizes[i]
			i++
		}
	}
	return nil
}

// ---- front handler ----

type countingWriter struct {
	http.ResponseWriter
}

func (w countingWriter) Write(p []byte) (int, error) {
	if st.cutNow() {
		return 0, fmt.Errorf("outage")
	}
	n, err := w.ResponseWriter.Write(p)
	st.served(int64(n))
	return n, err
}

func (s *state) cutNow() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outage
}

// served counts /folder bytes and trips the configured faults.
func (s *state) served(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.folderBytes += n
	if s.outageAfter >= 0 && s.folderBytes >= s.outageAfter {
		s.outage = true
		s.outageAfter = -1
	}
	if s.expireAfter >= 0 && s.folderBytes >= s.expireAfter {
		s.expireAll()
		s.expireAfter = -1
	}
}

func (s *state) expireAll() {
	s.expired["*"] = true
}

// sessionExpired: a cookie seen before an expiry is dead; cookies issued later live.
var liveCookies sync.Map

func cookieOf(r *http.Request) string {
	c, err := r.Cookie("vmware_soap_session")
	if err != nil {
		return ""
	}
	return c.Value
}

func hijackClose(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

func front(inner http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if st.cutNow() {
			hijackClose(w)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/rest/") || strings.HasPrefix(r.URL.Path, "/api/") {
			vapi(inner, w, r)
			return
		}
		cookie := cookieOf(r)
		st.mu.Lock()
		if st.expired["*"] {
			// Every session that exists now expires; later logins get fresh cookies.
			liveCookies.Range(func(k, _ interface{}) bool {
				st.expired[k.(string)] = true
				liveCookies.Delete(k)
				return true
			})
			delete(st.expired, "*")
		}
		dead := cookie != "" && st.expired[cookie]
		st.mu.Unlock()

		if strings.HasPrefix(r.URL.Path, "/folder/") {
			if dead || cookie == "" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			inner.ServeHTTP(countingWriter{w}, r)
			return
		}
		if r.Method != http.MethodPost {
			inner.ServeHTTP(w, r)
			return
		}
		body, err := ioutil.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if dead && !bytes.Contains(body, []byte("<Login")) && !bytes.Contains(body, []byte("RetrieveServiceContent")) {
			writeFault(w, "NotAuthenticated", "<object type=\"Folder\">group-d1</object><privilegeId>System.View</privilegeId>", "The session is not authenticated.")
			return
		}
		if dead {
			r.Header.Del("Cookie")
		}
		if bytes.Contains(body, []byte("<CurrentTime")) {
			st.mu.Lock()
			st.currentTime++
			st.mu.Unlock()
		}
		switch {
		case bytes.Contains(body, []byte("QueryChangedDiskAreas")):
			if !sessionOK(inner, cookie) {
				writeFault(w, "NotAuthenticated", "", "The session is not authenticated.")
				return
			}
			queryChangedDiskAreas(w, body)
			return
		case bytes.Contains(body, []byte("CreateSnapshot_Task")):
			st.enterSnapshot()
			r.Body = ioutil.NopCloser(bytes.NewReader(body))
			inner.ServeHTTP(w, r)
			st.mu.Lock()
			st.snapInFlight--
			st.mu.Unlock()
			return
		case bytes.Contains(body, []byte("RemoveSnapshot_Task")):
			st.mu.Lock()
			fail := st.failRemove > 0
			if fail {
				st.failRemove--
			}
			st.mu.Unlock()
			if fail {
				writeFault(w, "InvalidState", "", "The operation is not allowed in the current state (injected by ferry-vcsim).")
				return
			}
		}
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
		rec := &cookieSpy{ResponseWriter: w}
		inner.ServeHTTP(rec, r)
	})
}

// enterSnapshot counts a CreateSnapshot_Task call in flight and, while a barrier is set,
// holds it until the barrier's count of calls has arrived (or 60 s passed, which the
// control listener reports).
func (s *state) enterSnapshot() {
	s.mu.Lock()
	s.snapInFlight++
	if s.snapInFlight > s.snapMax {
		s.snapMax = s.snapInFlight
	}
	var wait chan struct{}
	if s.holdN > 0 && s.holdArrived < s.holdN {
		s.holdArrived++
		if s.holdArrived == s.holdN {
			close(s.holdRelease)
		} else {
			wait = s.holdRelease
		}
	}
	s.mu.Unlock()
	if wait == nil {
		return
	}
	select {
	case <-wait:
	case <-time.After(60 * time.Second):
		s.mu.Lock()
		s.holdTimedOut = true
		s.mu.Unlock()
	}
}

// ---- vAPI REST (tagging) ----

var vapiMode = "both"

// vapi passes /rest to the vAPI simulator and translates /api to it (the spelling of
// vSphere 7.0U2+: no "value" wrapper, ids without "id:", "action" without "~"). A session
// login must carry our user and password: the simulator accepts any.
func vapi(inner http.Handler, w http.ResponseWriter, r *http.Request) {
	api := strings.HasPrefix(r.URL.Path, "/api/")
	if vapiMode == "none" || (api && vapiMode == "rest") || (!api && vapiMode == "api") {
		http.NotFound(w, r)
		return
	}
	restPath := r.URL.Path
	q := r.URL.Query()
	if api {
		p, ok := apiToRest(r.URL.Path)
		if !ok {
			http.NotFound(w, r)
			return
		}
		restPath = p
		if a := q.Get("action"); a != "" {
			q.Del("action")
			q.Set("~action", a)
		}
	}
	if r.Method == http.MethodPost && restPath == "/rest/com/vmware/cis/session" && q.Get("~action") == "" {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != password {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"type":"com.vmware.vapi.std.errors.unauthenticated","value":{"messages":[]}}`)
			return
		}
	}
	if !api {
		inner.ServeHTTP(w, r)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = restPath
	r2.URL.RawPath = ""
	r2.URL.RawQuery = q.Encode()
	r2.RequestURI = ""
	rec := &bufWriter{h: http.Header{}}
	inner.ServeHTTP(rec, r2)
	code := rec.code
	if code == 0 {
		code = http.StatusOK
	}
	body := rec.buf.Bytes()
	if code == http.StatusOK {
		var wrapped struct {
			Value json.RawMessage `json:"value"`
		}
		if len(bytes.TrimSpace(body)) > 0 && json.Unmarshal(body, &wrapped) == nil {
			body = wrapped.Value
		}
	}
	for k, v := range rec.h {
		w.Header()[k] = v
	}
	w.Header().Del("Content-Length")
	if code == http.StatusOK && len(body) == 0 {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// apiToRest: /api/session and /api/cis/tagging/{category,tag,tag-association}[/ID].
func apiToRest(p string) (string, bool) {
	if p == "/api/session" {
		return "/rest/com/vmware/cis/session", true
	}
	rest := strings.TrimPrefix(p, "/api/cis/tagging/")
	if rest == p {
		return "", false
	}
	parts := strings.SplitN(rest, "/", 2)
	switch parts[0] {
	case "category", "tag", "tag-association":
	default:
		return "", false
	}
	out := "/rest/com/vmware/cis/tagging/" + parts[0]
	if len(parts) == 2 && parts[1] != "" {
		out += "/id:" + parts[1]
	}
	return out, true
}

// cookieSpy records session cookies the simulator hands out, so they can be expired.
type cookieSpy struct {
	http.ResponseWriter
	seen bool
}

func (c *cookieSpy) WriteHeader(code int) {
	c.record()
	c.ResponseWriter.WriteHeader(code)
}

func (c *cookieSpy) Write(p []byte) (int, error) {
	c.record()
	return c.ResponseWriter.Write(p)
}

func (c *cookieSpy) record() {
	if c.seen {
		return
	}
	c.seen = true
	for _, v := range c.Header()["Set-Cookie"] {
		if strings.HasPrefix(v, "vmware_soap_session=") {
			val := strings.TrimPrefix(v, "vmware_soap_session=")
			if i := strings.IndexByte(val, ';'); i >= 0 {
				val = val[:i]
			}
			liveCookies.Store(strings.Trim(val, "\""), true)
		}
	}
}

// sessionOK asks the simulator itself whether the cookie is a live session.
func sessionOK(inner http.Handler, cookie string) bool {
	if cookie == "" {
		return false
	}
	req := `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime></soapenv:Body></soapenv:Envelope>`
	r, _ := http.NewRequest(http.MethodPost, "/sdk", strings.NewReader(req))
	r.Header.Set("Content-Type", "text/xml")
	r.Header.Set("SOAPAction", "urn:vim25/6.5")
	r.AddCookie(&http.Cookie{Name: "vmware_soap_session", Value: cookie})
	rec := &bufWriter{h: http.Header{}}
	inner.ServeHTTP(rec, r)
	return !bytes.Contains(rec.buf.Bytes(), []byte("Fault"))
}

type bufWriter struct {
	h    http.Header
	buf  bytes.Buffer
	code int
}

func (b *bufWriter) Header() http.Header         { return b.h }
func (b *bufWriter) Write(p []byte) (int, error) { return b.buf.Write(p) }
func (b *bufWriter) WriteHeader(c int)           { b.code = c }

func writeFault(w http.ResponseWriter, typ, detail, msg string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`,
		xmlEscape(msg), typ, typ, detail, typ)
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// ---- QueryChangedDiskAreas ----

type qcdaReq struct {
	Body struct {
		Q struct {
			This        string `xml:"_this"`
			Snapshot    string `xml:"snapshot"`
			DeviceKey   int32  `xml:"deviceKey"`
			StartOffset int64  `xml:"startOffset"`
			ChangeId    string `xml:"changeId"`
		} `xml:"QueryChangedDiskAreas"`
	} `xml:"Body"`
}

func queryChangedDiskAreas(w http.ResponseWriter, body []byte) {
	var req qcdaReq
	if err := xml.Unmarshal(body, &req); err != nil {
		writeFault(w, "InvalidRequest", "", err.Error())
		return
	}
	q := req.Body.Q
	vmObj := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: q.This})
	if vmObj == nil {
		writeFault(w, "ManagedObjectNotFound", fmt.Sprintf(`<obj type="VirtualMachine">%s</obj>`, q.This), "The object has already been deleted or has not been completely created")
		return
	}
	snapObj := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: q.Snapshot})
	snap, ok := snapObj.(*simulator.VirtualMachineSnapshot)
	if !ok {
		writeFault(w, "ManagedObjectNotFound", fmt.Sprintf(`<obj type="VirtualMachineSnapshot">%s</obj>`, q.Snapshot), "The object has already been deleted or has not been completely created")
		return
	}
	var disk *types.VirtualDisk
	for _, d := range snap.Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok && vd.Key == q.DeviceKey {
			disk = vd
		}
	}
	if disk == nil {
		writeFault(w, "InvalidArgument", "<invalidProperty>deviceKey</invalidProperty>", "A specified parameter was not correct: deviceKey")
		return
	}
	backing := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	cbtOn := snap.Config.ChangeTrackingEnabled != nil && *snap.Config.ChangeTrackingEnabled
	// "*" needs tracking on; a changeId to compare with needs the disk to have one.
	if !cbtOn || (backing.ChangeId == "" && q.ChangeId != "*") {
		writeFault(w, "FileFault", "<file>"+xmlEscape(backing.FileName)+"</file>", "Change tracking is not enabled for this disk")
		return
	}
	capacity := disk.CapacityInBytes
	if q.StartOffset < 0 || q.StartOffset > capacity {
		writeFault(w, "InvalidArgument", "<invalidProperty>startOffset</invalidProperty>", "A specified parameter was not correct: startOffset")
		return
	}
	end := q.StartOffset + st.window
	if end > capacity {
		end = capacity
	}
	var areas []area
	if q.ChangeId == "*" {
		areas = allocated(backing.FileName, q.StartOffset, end)
	} else {
		key := fmt.Sprintf("%s/%d", q.This, q.DeviceKey)
		st.mu.Lock()
		cd := st.disks[key]
		from, okFrom := parseChangeId(cd, q.ChangeId)
		upto, okUpto := parseChangeId(cd, backing.ChangeId)
		if cd != nil && okFrom && okUpto && from <= upto {
			for g := from + 1; g <= upto; g++ {
				areas = append(areas, cd.changes[g]...)
			}
		}
		st.mu.Unlock()
		if !okFrom || !okUpto || from > upto {
			writeFault(w, "InvalidArgument", "<invalidProperty>changeId</invalidProperty>", "A specified parameter was not correct: changeId")
			return
		}
	}
	var out bytes.Buffer
	for _, a := range clip(merge(areas), q.StartOffset, end) {
		fmt.Fprintf(&out, "<changedArea><start>%d</start><length>%d</length></changedArea>", a.Start, a.Len)
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>%s</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>`,
		q.StartOffset, end-q.StartOffset, out.String())
}

func parseChangeId(cd *cbtDisk, id string) (int, bool) {
	if cd == nil || !strings.HasPrefix(id, cd.prefix+"/") {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimPrefix(id, cd.prefix+"/"))
	if err != nil || n < 1 || n > cd.gen {
		return 0, false
	}
	return n, true
}

func merge(in []area) []area {
	// insertion sort: tests use few areas
	for i := 1; i < len(in); i++ {
		for j := i; j > 0 && in[j].Start < in[j-1].Start; j-- {
			in[j], in[j-1] = in[j-1], in[j]
		}
	}
	var out []area
	for _, a := range in {
		if n := len(out); n > 0 && a.Start <= out[n-1].Start+out[n-1].Len {
			if e := a.Start + a.Len; e > out[n-1].Start+out[n-1].Len {
				out[n-1].Len = e - out[n-1].Start
			}
			continue
		}
		out = append(out, a)
	}
	return out
}

func clip(in []area, start, end int64) []area {
	var out []area
	for _, a := range in {
		s, e := a.Start, a.Start+a.Len
		if s < start {
			s = start
		}
		if e > end {
			e = end
		}
		if e > s {
			out = append(out, area{s, e - s})
		}
	}
	return out
}

var zeroBlock = make([]byte, 1<<20)

// allocated: the 1 MiB blocks of the flat extent in [start, end) that hold non-zero bytes.
func allocated(fileName string, start, end int64) []area {
	flat := dsLocalPath(strings.Replace(fileName, ".vmdk", "-flat.vmdk", 1))
	f, err := os.Open(flat)
	if err != nil {
		return []area{{start, end - start}}
	}
	defer f.Close()
	var out []area
	buf := make([]byte, 1<<20)
	for off := start - start%int64(len(buf)); off < end; off += int64(len(buf)) {
		n, _ := f.ReadAt(buf, off)
		if n <= 0 {
			break
		}
		if !bytes.Equal(buf[:n], zeroBlock[:n]) {
			out = append(out, area{off, int64(len(buf))})
		}
	}
	return clip(merge(out), start, end)
}

func dsLocalPath(dsPath string) string {
	var p object.DatastorePath
	p.FromString(dsPath)
	for _, e := range simulator.Map.All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok && ds.Name == p.Datastore {
			return path.Join(ds.Info.GetDatastoreInfo().Url, p.Path)
		}
	}
	return ""
}

// ---- control listener ----

func control() http.Handler {
	m := http.NewServeMux()
	// POST /cbt?vm=vm-42&key=2000[&reset=1] with body lines "START LENGTH": a new CBT
	// generation with those areas; the disk's changeId moves to it. An empty body just
	// starts one; reset=1 first forgets every earlier changeId of the disk.
	m.HandleFunc("/cbt", func(w http.ResponseWriter, r *http.Request) {
		vmRef := r.URL.Query().Get("vm")
		key, _ := strconv.Atoi(r.URL.Query().Get("key"))
		body, _ := ioutil.ReadAll(r.Body)
		var areas []area
		for _, line := range strings.Split(string(body), "\n") {
			f := strings.Fields(line)
			if len(f) != 2 {
				continue
			}
			s, _ := strconv.ParseInt(f[0], 10, 64)
			l, _ := strconv.ParseInt(f[1], 10, 64)
			areas = append(areas, area{s, l})
		}
		if r.URL.Query().Get("reset") != "" {
			// A CBT reset (as after a host crash): earlier changeIds become unknown.
			st.mu.Lock()
			if cd := st.disks[fmt.Sprintf("%s/%d", vmRef, key)]; cd != nil {
				cd.prefix += "-reset"
				cd.gen = 0
				cd.changes = map[int][]area{}
			}
			st.mu.Unlock()
		}
		id, err := bumpCBT(vmRef, int32(key), areas)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, id)
	})
	m.HandleFunc("/expire-sessions", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		defer st.mu.Unlock()
		if n := r.URL.Query().Get("after-bytes"); n != "" {
			v, _ := strconv.ParseInt(n, 10, 64)
			st.expireAfter = st.folderBytes + v
			return
		}
		st.expireAll()
	})
	m.HandleFunc("/outage", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		defer st.mu.Unlock()
		switch n := r.URL.Query().Get("after-bytes"); {
		case r.URL.Query().Get("end") != "":
			st.outage = false
			st.outageAfter = -1
		case n != "":
			v, _ := strconv.ParseInt(n, 10, 64)
			st.outageAfter = st.folderBytes + v
		default:
			st.outage = true
		}
	})
	m.HandleFunc("/fail-remove-snapshot", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		st.mu.Lock()
		st.failRemove = n
		st.mu.Unlock()
	})
	// POST /hold-snapshots?n=N: the next N CreateSnapshot_Task calls wait for each other.
	m.HandleFunc("/hold-snapshots", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		st.mu.Lock()
		st.holdN, st.holdArrived, st.holdTimedOut, st.snapMax = n, 0, false, 0
		st.holdRelease = make(chan struct{})
		st.mu.Unlock()
	})
	// POST /snapshots: the most CreateSnapshot_Task calls in flight at once, and the barrier.
	m.HandleFunc("/snapshots", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		defer st.mu.Unlock()
		line, _ := json.Marshal(map[string]interface{}{
			"max_in_flight": st.snapMax,
			"arrived":       st.holdArrived,
			"timed_out":     st.holdTimedOut,
		})
		fmt.Fprintln(w, string(line))
	})
	m.HandleFunc("/current-time-calls", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		defer st.mu.Unlock()
		fmt.Fprintln(w, st.currentTime)
	})
	m.HandleFunc("/folder-bytes", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		defer st.mu.Unlock()
		fmt.Fprintln(w, st.folderBytes)
	})
	return m
}

// bumpCBT starts a new change generation. The VM's device list is replaced, not edited
// in place: snapshots hold a shallow copy of the config and must keep their changeIds.
func bumpCBT(vmRef string, key int32, areas []area) (string, error) {
	obj := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: vmRef})
	vm, ok := obj.(*simulator.VirtualMachine)
	if !ok {
		return "", fmt.Errorf("no VM %s", vmRef)
	}
	st.mu.Lock()
	k := fmt.Sprintf("%s/%d", vmRef, key)
	cd := st.disks[k]
	if cd == nil {
		cd = &cbtDisk{prefix: fmt.Sprintf("52 ferry %s %d", vmRef, key), changes: map[int][]area{}}
		st.disks[k] = cd
	}
	cd.gen++
	cd.changes[cd.gen] = areas
	id := fmt.Sprintf("%s/%d", cd.prefix, cd.gen)
	st.mu.Unlock()

	var err error
	simulator.Map.WithLock(vm, func() {
		cfg := *vm.Config
		devs := make([]types.BaseVirtualDevice, len(cfg.Hardware.Device))
		found := false
		for i, d := range cfg.Hardware.Device {
			devs[i] = d
			if disk, ok := d.(*types.VirtualDisk); ok && disk.Key == key {
				nd := *disk
				nb := *disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
				nb.ChangeId = id
				nd.Backing = &nb
				devs[i] = &nd
				found = true
			}
		}
		if !found {
			err = fmt.Errorf("no disk %d on %s", key, vmRef)
			return
		}
		cfg.Hardware.Device = devs
		vm.Config = &cfg
	})
	return id, err
}
