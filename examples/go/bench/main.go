// SPDX-License-Identifier: Apache-2.0

// Command bench measures the Go client (client/go) against a running nexusd, one workload
// after the other, each for -duration after -warmup, and prints one line per workload:
//
//	publish-ack   acknowledged emits (EmitAck), -inflight goroutines on one connection, each
//	              waiting for its ack before the next: events/s
//	publish-ff    fire-and-forget emits (Emit) from one goroutine; the clock stops when a
//	              Ping sent after the last returns (frames are handled in order): events/s
//	rt-echo       requests to the broker's built-in test:echo (nexusd --test-handlers),
//	              -inflight at once, each Call waiting for success: round trips/s
//	rt-handler    requests to bench:echo, served by a Go handler (Handle) on a second
//	              connection, -inflight at once: round trips/s
//
//	bench [-broker HOST:PORT] [-duration 5s] [-warmup 1s] [-inflight 64] [-only NAME,...]
//
// Payloads are a Struct with one string of 40 characters (about 64 bytes as protobuf, like
// nexus-bench's default). Every event goes to campaign -campaign (default: from the clock).
// bench/run-clients runs it beside nexus-bench.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"nexus/client/go/nexus"
)

type config struct {
	addr     string
	duration time.Duration
	warmup   time.Duration
	inflight int
	campaign int64
	payload  *nexus.Payload
}

func main() {
	var cfg config
	broker := flag.String("broker", "", "broker HOST:PORT (default $NEXUS_BROKER, else 127.0.0.1:7400)")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "measured time per workload")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured time before it")
	flag.IntVar(&cfg.inflight, "inflight", 64, "acknowledged emits / requests in flight")
	flag.Int64Var(&cfg.campaign, "campaign", time.Now().Unix()%1000000+1000, "campaign id")
	only := flag.String("only", "", "comma-separated workloads (default: all)")
	flag.Parse()
	cfg.addr = *broker
	p, err := nexus.NewPayload(map[string]any{"s": strings.Repeat("x", 40)})
	if err != nil {
		fail(err)
	}
	cfg.payload = p
	workloads := []struct {
		name string
		run  func(context.Context, config) (int64, time.Duration, error)
	}{
		{"publish-ack", publishAck},
		{"publish-ff", publishFF},
		{"rt-echo", func(ctx context.Context, c config) (int64, time.Duration, error) {
			return roundTrips(ctx, c, "test:echo:v1", false)
		}},
		{"rt-handler", func(ctx context.Context, c config) (int64, time.Duration, error) {
			return roundTrips(ctx, c, "bench:echo:v1", true)
		}},
	}
	for _, w := range workloads {
		if *only != "" && !strings.Contains(","+*only+",", ","+w.name+",") {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*(cfg.duration+cfg.warmup)+30*time.Second)
		n, took, err := w.run(ctx, cfg)
		cancel()
		if err != nil {
			fail(fmt.Errorf("%s: %w", w.name, err))
		}
		fmt.Printf("%s %.0f /s (%d in %.2f s, inflight %d)\n", w.name, float64(n)/took.Seconds(), n, took.Seconds(), cfg.inflight)
		cfg.campaign++
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func dial(ctx context.Context, c config) (*nexus.Client, error) {
	return nexus.Dial(ctx, c.addr, nexus.WithClientName("nexus-gobench"), nexus.WithoutReconnect())
}

// measure runs worker in c.inflight goroutines until the warm-up and the measured time have
// passed, and returns what they counted in the measured time.
func measure(ctx context.Context, c config, workers int, worker func(ctx context.Context) error) (int64, time.Duration, error) {
	var counted atomic.Int64
	var measuring atomic.Bool
	stop := make(chan struct{})
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := worker(ctx); err != nil {
					errs <- err
					return
				}
				if measuring.Load() {
					counted.Add(1)
				}
			}
		}()
	}
	time.Sleep(c.warmup)
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(c.duration)
	measuring.Store(false)
	took := time.Since(t0)
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		return 0, 0, err
	default:
	}
	return counted.Load(), took, nil
}

func publishAck(ctx context.Context, c config) (int64, time.Duration, error) {
	cl, err := dial(ctx, c)
	if err != nil {
		return 0, 0, err
	}
	defer cl.Close()
	return measure(ctx, c, c.inflight, func(ctx context.Context) error {
		_, err := cl.EmitAck(ctx, &nexus.EventRequest{EventType: "bench:go:v1:success", CampaignId: c.campaign, Payload: c.payload})
		return err
	})
}

func publishFF(ctx context.Context, c config) (int64, time.Duration, error) {
	cl, err := dial(ctx, c)
	if err != nil {
		return 0, 0, err
	}
	defer cl.Close()
	var n int64
	emit := func(until time.Time) error {
		for time.Now().Before(until) {
			for i := 0; i < 256; i++ {
				if err := cl.Emit(ctx, &nexus.EventRequest{EventType: "bench:go:v1:success", CampaignId: c.campaign, Payload: c.payload}); err != nil {
					return err
				}
				n++
			}
		}
		_, err := cl.Ping(ctx)
		return err
	}
	if err := emit(time.Now().Add(c.warmup)); err != nil {
		return 0, 0, err
	}
	n = 0
	t0 := time.Now()
	if err := emit(t0.Add(c.duration)); err != nil {
		return 0, 0, err
	}
	return n, time.Since(t0), cl.Err()
}

func roundTrips(ctx context.Context, c config, action string, serve bool) (int64, time.Duration, error) {
	cl, err := dial(ctx, c)
	if err != nil {
		return 0, 0, err
	}
	defer cl.Close()
	if serve {
		h, err := dial(ctx, c)
		if err != nil {
			return 0, 0, err
		}
		defer h.Close()
		echo := func(ctx context.Context, ev *nexus.EventResponse, _ chan<- *nexus.EventResponse) error {
			nexus.SetResult(ctx, ev.Payload)
			return nil
		}
		if err := h.Handle(ctx, "bench:echo", echo); err != nil {
			return 0, 0, err
		}
	}
	return measure(ctx, c, c.inflight, func(ctx context.Context) error {
		res, err := cl.Call(ctx, &nexus.EventRequest{EventType: action, CampaignId: c.campaign, Payload: c.payload})
		if err != nil {
			return err
		}
		if res.Payload == nil {
			return errors.New("success without the echoed payload")
		}
		return nil
	})
}
