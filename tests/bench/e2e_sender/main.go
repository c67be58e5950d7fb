// The sending half of the end-to-end bench: START/END pairs POSTed at a fixed rate.
//
// In Go, so that the sender is not the bottleneck it measures: at ~2,950 POST/s a Python sender
// (aiohttp on uvloop) took about one of this machine's two cores and stamped its times late.
// Pair i is started every 2/rate seconds; its END is POSTed right after its START's 202. The
// bodies are two templates (files), with every "@@I@@" replaced by the pair's number and every
// "@@T@@" by the Unix second of the send (the notification's `ts`, as Cloudflare stamps it). Times are
// wall-clock Unix seconds, to compare with the consumer's on the same machine. Writes one JSON
// object to OUT:
// {"sent": {"<i>:<state>": t}, "answered": {...}, "failures": {"<status or error>": n}}.
//
// Run: e2e-sender URL SECRET RATE SECONDS START_BODY END_BODY OUT CONNECTIONS
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

var states = [2]string{"open", "resolved"}

type post struct {
	sent, answered time.Time
	failure        string // "" when answered 202
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func main() {
	if len(os.Args) != 9 {
		fmt.Fprintln(os.Stderr, "usage: e2e-sender URL SECRET RATE SECONDS START_BODY END_BODY OUT CONNECTIONS")
		os.Exit(2)
	}
	url, secret, out := os.Args[1], os.Args[2], os.Args[7]
	rate, err1 := strconv.ParseFloat(os.Args[3], 64)
	seconds, err2 := strconv.ParseFloat(os.Args[4], 64)
	connections, err3 := strconv.Atoi(os.Args[8])
	var templates [2][]byte
	var err4, err5 error
	templates[0], err4 = os.ReadFile(os.Args[5])
	templates[1], err5 = os.ReadFile(os.Args[6])
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxConnsPerHost:     connections,
			MaxIdleConnsPerHost: connections,
			DisableCompression:  true,
		},
	}
	pairs := max(1, int(rate*seconds/2))
	posts := make([][2]post, pairs)
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) * 2 / rate)
	start := time.Now().Add(50 * time.Millisecond)
	for i := range pairs {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			number := []byte(strconv.Itoa(i))
			for s := range states {
				body := bytes.ReplaceAll(templates[s], []byte("@@I@@"), number)
				now := []byte(strconv.FormatInt(time.Now().Unix(), 10))
				body = bytes.ReplaceAll(body, []byte("@@T@@"), now)
				p := &posts[i][s]
				p.failure = send(client, url, secret, body, p)
				if p.failure != "" {
					return
				}
			}
		}()
	}
	wg.Wait()
	result := map[string]any{}
	sent, answered, failures := map[string]float64{}, map[string]float64{}, map[string]int{}
	for i := range posts {
		for s, state := range states {
			p := posts[i][s]
			if p.sent.IsZero() {
				continue
			}
			key := strconv.Itoa(i) + ":" + state
			sent[key] = unix(p.sent)
			if p.failure != "" {
				failures[p.failure]++
			} else {
				answered[key] = unix(p.answered)
			}
		}
	}
	result["sent"], result["answered"], result["failures"] = sent, answered, failures
	encoded, err := json.Marshal(result)
	if err == nil {
		err = os.WriteFile(out, encoded, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// send POSTs one body, noting when it was sent and answered; it returns "" for a 202, else the
// status or the error's kind.
func send(client *http.Client, url, secret string, body []byte, p *post) string {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "request"
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("cf-webhook-auth", secret)
	p.sent = time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Sprintf("%T", errors.Unwrap(err))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	p.answered = time.Now()
	if resp.StatusCode != http.StatusAccepted {
		return strconv.Itoa(resp.StatusCode)
	}
	return ""
}
