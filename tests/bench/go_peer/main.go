// The ingest peer for `make bench`: what a user might write in Go instead of `cfn ingest`.
//
// net/http; a SHA-256 check of the cf-webhook-auth secret (constant time); the body must be a
// JSON object; franz-go produces it with acks=all and idempotence, and the answer is 202 only
// after Kafka acknowledged it (503 if not). Configuration from the environment:
// GO_PEER_PORT, GO_PEER_BOOTSTRAP, GO_PEER_TOPIC, GO_PEER_SECRET.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

const maxBody = 1 << 20

func main() {
	port := os.Getenv("GO_PEER_PORT")
	topic := os.Getenv("GO_PEER_TOPIC")
	want := sha256.Sum256([]byte(os.Getenv("GO_PEER_SECRET")))
	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(os.Getenv("GO_PEER_BOOTSTRAP"), ",")...),
		kgo.DefaultProduceTopic(topic),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotence is franz-go's default with acks=all
		kgo.ProducerLinger(0),
	)
	if err != nil {
		log.Fatalf("kafka client: %v", err)
	}
	defer client.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := client.Ping(ctx); err != nil {
			http.Error(w, `{"status":"not_ready"}`, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"status":"ready"}`))
	})
	mux.HandleFunc("/webhooks/cloudflare", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, `{"error":"method_not_allowed"}`, http.StatusMethodNotAllowed)
			return
		}
		got := sha256.Sum256([]byte(r.Header.Get("cf-webhook-auth")))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil || len(body) > maxBody {
			http.Error(w, `{"error":"bad_body"}`, http.StatusRequestEntityTooLarge)
			return
		}
		trimmed := bytes.TrimLeft(body, " \t\r\n")
		if len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(body) {
			http.Error(w, `{"error":"not_an_object"}`, http.StatusBadRequest)
			return
		}
		record := &kgo.Record{Value: body}
		if err := client.ProduceSync(r.Context(), record).FirstErr(); err != nil {
			http.Error(w, `{"error":"kafka_unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		w.Write([]byte(`{"status":"accepted"}`))
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, mux))
}
