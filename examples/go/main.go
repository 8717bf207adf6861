// Publish one push job to Misiva's work queue with github.com/rabbitmq/amqp091-go,
// confirmed by the broker.
//
//	go mod init publish && go get github.com/rabbitmq/amqp091-go
//	MISIVA_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f TOKEN=<hex> go run .
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	url := env("MISIVA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
	queue := env("MISIVA_QUEUE", "misiva.jobs")
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		log.Fatal(err)
	}
	id := fmt.Sprintf("go-%x", b)
	body, err := json.Marshal(map[string]any{
		"id":    id,
		"token": os.Getenv("TOKEN"),
		"alert": map[string]string{"title": "Your order has shipped", "body": "It arrives on Friday."},
	})
	if err != nil {
		log.Fatal(err)
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	confirm, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{
		ContentType:  "application/json",
		DeliveryMode: amqp.Persistent,
		MessageId:    id,
		Body:         body,
	})
	if err != nil {
		log.Fatal(err)
	}
	if ok, err := confirm.WaitContext(ctx); err != nil || !ok {
		log.Fatalf("the broker did not confirm the job: %v", err)
	}
	fmt.Println(id)
}
