// SPDX-License-Identifier: Apache-2.0

package nexus_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"nexus/client/go/nexus"
)

// Publish and subscribe. Dial's empty address means $NEXUS_BROKER, else 127.0.0.1:7400
// (here: the broker the package's tests start).
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nexus.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	sub, err := c.Subscribe(ctx, 1, []string{"order:*:v1:*"})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()

	data, _ := nexus.NewPayload(map[string]any{"order_id": "A-1001", "total": 42.5})
	if _, err := c.EmitAck(ctx, &nexus.EventRequest{
		EventType: "order:placed:v1:completed", CampaignId: 1, Payload: data,
	}); err != nil {
		log.Fatal(err)
	}
	ev := <-sub.Events()
	fmt.Println(ev.EventType, nexus.Data(ev)["order_id"], nexus.Data(ev)["total"])
	// Output: order:placed:v1:completed A-1001 42.5
}

// A request with its lifecycle: started, stream events, then one terminal event.
// test:stream_ticks is a built-in of nexusd --test-handlers: count stream events, then
// success.
func ExampleClient_Request() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nexus.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	args, _ := nexus.NewPayload(map[string]any{"count": 3, "interval_ms": 10})
	call, err := c.Request(ctx, &nexus.EventRequest{
		EventType: "test:stream_ticks:v1", CampaignId: 2, Payload: args,
	})
	if err != nil {
		log.Fatal(err)
	}
	for u := range call.Updates() {
		switch u := u.(type) {
		case *nexus.Started:
			fmt.Println("started")
		case *nexus.Stream:
			fmt.Println("stream", u.Seq, nexus.Data(u.E)["n"])
		case *nexus.Heartbeat:
			// every heartbeat_ms while the stream is open: progress, liveness
		case *nexus.Result:
			fmt.Println(u.State)
		}
	}
	// Output:
	// started
	// stream 1 1
	// stream 2 2
	// stream 3 3
	// success
}

// Cancel a request through its context: the client emits the cancel, the broker ends the
// request `cancelled`.
func ExampleClient_Request_cancel() {
	c, err := nexus.Dial(context.Background(), "")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	call, err := c.Request(ctx, &nexus.EventRequest{EventType: "test:stream_ticks:v1", CampaignId: 3})
	if err != nil {
		log.Fatal(err)
	}
	for u := range call.Updates() {
		if _, ok := u.(*nexus.Stream); ok {
			cancel() // enough
			break
		}
	}
	res, err := call.Wait()
	fmt.Println(res.State, errors.Is(err, context.Canceled))
	// Output: cancelled true
}

// Call waits for the end of a request and returns its result, or why it failed.
func ExampleClient_Call() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nexus.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	q, _ := nexus.NewPayload(map[string]any{"hello": "world"})
	r, err := c.Call(ctx, &nexus.EventRequest{EventType: "test:echo:v1", CampaignId: 4, Payload: q})
	fmt.Println(nexus.Data(r)["hello"], err)

	_, err = c.Call(ctx, &nexus.EventRequest{EventType: "nobody:serves:v1", CampaignId: 4})
	var re *nexus.RequestError
	if errors.As(err, &re) {
		fmt.Println(re.State, re.Code)
	}
	// Output:
	// world <nil>
	// failed no_handler
}

// Serve an action: each request runs the handler, whose sends on streamData become stream
// events and whose return ends the request. The requester here is another client.
func ExampleClient_Handle() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	server, err := nexus.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()

	stock := map[string]float64{"tea": 3, "coffee": 0}
	err = server.Handle(ctx, "inventory:stream_stock",
		func(ctx context.Context, ev *nexus.EventResponse, streamData chan<- *nexus.EventResponse) error {
			sku, _ := nexus.Data(ev)["sku"].(string)
			n, ok := stock[sku]
			if !ok {
				return nexus.Fail("unknown_sku", "no such sku: %q", sku)
			}
			for left := n; left > 0; left-- {
				p, _ := nexus.NewPayload(map[string]any{"sku": sku, "left": left})
				select {
				case streamData <- &nexus.EventResponse{Payload: p}:
				case <-ctx.Done(): // cancelled, timed out, or the requester left
					return ctx.Err()
				}
			}
			result, _ := nexus.NewPayload(map[string]any{"sku": sku, "sold_out": true})
			nexus.SetResult(ctx, result)
			return nil
		}, nexus.Streaming())
	if err != nil {
		log.Fatal(err)
	}

	client, err := nexus.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	for _, sku := range []string{"tea", "milk"} {
		q, _ := nexus.NewPayload(map[string]any{"sku": sku})
		call, err := client.Request(ctx, &nexus.EventRequest{
			EventType: "inventory:stream_stock:v1", CampaignId: 5, Payload: q,
		})
		if err != nil {
			log.Fatal(err)
		}
		for u := range call.Updates() {
			switch u := u.(type) {
			case *nexus.Stream:
				fmt.Println(u.Seq, nexus.Data(u.E)["left"])
			case *nexus.Result:
				fmt.Println(u.State, u.Code, nexus.Data(u.E))
			}
		}
	}
	// Output:
	// 1 3
	// 2 2
	// 3 1
	// success  map[sku:tea sold_out:true]
	// failed unknown_sku map[code:unknown_sku message:no such sku: "milk"]
}

// SubscribeFunc calls a function for each event instead of handing out a channel.
func ExampleClient_SubscribeFunc() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nexus.Dial(ctx, "")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	got := make(chan string, 1)
	sub, err := c.SubscribeFunc(ctx, 6, []string{"*:*:*:success"}, func(ev *nexus.EventResponse) {
		got <- ev.EventType
	}, nexus.UserFilter("alice"))
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	for _, user := range []string{"bob", "alice"} {
		md := &nexus.Metadata{GlobalContext: &nexus.GlobalContext{UserId: user}}
		if err := c.Emit(ctx, &nexus.EventRequest{
			EventType: "payment:charge:v1:success", CampaignId: 6, Metadata: md,
		}); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println(<-got)
	// Output: payment:charge:v1:success
}
