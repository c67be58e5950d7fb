// The ingest peer for `make bench`: what a user might write in Go instead of `cfn ingest`.
//
// net/http; a SHA-256 check of the cf-webhook-auth secret (constant time); the body must be a
// JSON object; franz-go produces it with acks=all and idempotence, and the answer is 202 only
// after Kafka acknowledged it (503 if not). Configuration from the environment:
// GO_PEER_PORT, GO_PEER_BOOTSTRAP, GO_PEER_TOPIC, GO_PEER_SECRET, and GO_PEER_KEY.
//
// With GO_PEER_KEY=incident it keys each record as `cfn ingest` keys `cfn.raw` (schemas/keys.py,
// incident_key, tenant "default"), decoding the body's fields for it, so its records spread over
// the topic's partitions as cfn's do; without it, records have no key and franz-go's sticky
// partitioner fills one partition's batch at a time.
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

// The body fields cfn's record key is made of; any of them may be missing.
type keyFields struct {
	AccountID   any `json:"account_id"`
	Correlation any `json:"alert_correlation_id"`
	AlertType   any `json:"alert_type"`
	PolicyID    any `json:"policy_id"`
}

// text renders a decoded JSON value as cfn's _text does for string fields (the bodies the bench
// sends): strings as they are, missing as empty; other values in their JSON form.
func text(value any) string {
	switch v := value.(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		encoded, _ := json.Marshal(v)
		return string(encoded)
	}
}

// incidentKey is cfn's incident_key for the tenant "default".
func incidentKey(body []byte) ([]byte, bool) {
	var f keyFields
	if err := json.Unmarshal(body, &f); err != nil {
		return nil, false
	}
	account := text(f.AccountID)
	if correlation := text(f.Correlation); correlation != "" {
		return []byte("default|" + account + "|" + correlation), true
	}
	return []byte("default|" + account + "|-|" + text(f.AlertType) + "|" + text(f.PolicyID)), true
}

func main() {
	port := os.Getenv("GO_PEER_PORT")
	topic := os.Getenv("GO_PEER_TOPIC")
	want := sha256.Sum256([]byte(os.Getenv("GO_PEER_SECRET")))
	keyed := os.Getenv("GO_PEER_KEY") == "incident"
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
		record := &kgo.Record{Value: body}
		valid := false
		if keyed {
			record.Key, valid = incidentKey(body) // decoding it is the JSON check
		} else {
			valid = json.Valid(body)
		}
		trimmed := bytes.TrimLeft(body, " \t\r\n")
		if !valid || len(trimmed) == 0 || trimmed[0] != '{' {
			http.Error(w, `{"error":"not_an_object"}`, http.StatusBadRequest)
			return
		}
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
