// go-put: a second, independent put loader for the issue-22 comparisons. It drives a
// server with etcd's own Go client (clientv3, built in GOPATH mode from Debian's
// golang-etcd-server-dev, as ci/e2e-runner.sh builds etcd's e2e suite), so a result
// does not rest on keel-bench's h2 client alone. Closed loop: each client puts, waits for
// the answer, puts again, for --seconds. Prints one line: throughput, latency
// percentiles (exact, from every sample), errors, and the server's CPU per put when
// --server-pid is given (utime + stime from /proc/PID/stat).
//
// bench/go-put.sh builds it and runs it against Keel and etcd side by side.
package main

import (
	"context"
	"flag"
	"fmt"
	"io/ioutil"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
)

// cpuTicks is the process's utime + stime in clock ticks (100 per second on Linux).
func cpuTicks(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := ioutil.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "server(s), host:port[,host:port]")
	conns := flag.Int("conns", 1, "clientv3 clients (one gRPC connection each)")
	clients := flag.Int("clients", 1, "closed-loop clients, spread over the connections")
	seconds := flag.Float64("seconds", 5, "seconds to run")
	keySpace := flag.Int("key-space-size", 10000, "distinct keys (8-byte decimal)")
	valSize := flag.Int("val-size", 256, "value bytes")
	pid := flag.Int("server-pid", 0, "PID whose CPU per put to report")
	label := flag.String("label", "endpoint", "the run's name on its line")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "go-put: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}

	cs := make([]*clientv3.Client, *conns)
	for i := range cs {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   strings.Split(*endpoints, ","),
			DialTimeout: 5 * time.Second,
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "go-put: connect: %v\n", err)
			os.Exit(1)
		}
		defer c.Close()
		cs[i] = c
	}
	val := strings.Repeat("v", *valSize)
	var errs int64
	lat := make([][]time.Duration, *clients)
	cpu0 := cpuTicks(*pid)
	start := time.Now()
	deadline := start.Add(time.Duration(*seconds * float64(time.Second)))
	var wg sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := cs[i%len(cs)]
			r := rand.New(rand.NewSource(int64(i) + 1))
			for time.Now().Before(deadline) {
				k := fmt.Sprintf("%08d", r.Intn(*keySpace))
				t := time.Now()
				if _, err := c.Put(context.Background(), k, val); err != nil {
					atomic.AddInt64(&errs, 1)
					continue
				}
				lat[i] = append(lat[i], time.Since(t))
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu := float64(cpuTicks(*pid)-cpu0) * 10000 // ticks → µs
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		fmt.Fprintf(os.Stderr, "go-put: no put succeeded (%d errors)\n", errs)
		os.Exit(1)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	pct := func(q float64) int64 {
		return all[int(q*float64(len(all)-1))].Microseconds()
	}
	line := fmt.Sprintf("%s go-put clients=%d conns=%d puts=%d errors=%d | %.0f req/s | p50 %d µs, p90 %d µs, p99 %d µs, p99.9 %d µs, max %d µs",
		*label, *clients, *conns, len(all), errs, float64(len(all))/elapsed,
		pct(0.5), pct(0.9), pct(0.99), pct(0.999), all[len(all)-1].Microseconds())
	if *pid != 0 {
		line += fmt.Sprintf(" | server cpu %.1f µs/req", cpu/float64(len(all)))
	}
	fmt.Println(line)
}
