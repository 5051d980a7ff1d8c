// The seed's reference server: Gin + gorilla/websocket with an echo handler, as the
// walkthrough wsgate grew from builds it (no auth, no preflight beyond the upgrade).
// Baseline for wsgate's handshake rate and idle memory per connection.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o go-echo .
//	./go-echo -listen 127.0.0.1:9200     # ws://127.0.0.1:9200/ws
package main

import (
	"flag"
	"log"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	CheckOrigin:     func(r *http.Request) bool { return true },
}

func echo(c *gin.Context) {
	conn, err := upgrader.Upgrade(c.Writer, c.Request, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	for {
		mt, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if err := conn.WriteMessage(mt, msg); err != nil {
			return
		}
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:9200", "listen address")
	flag.Parse()
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.GET("/ws", echo)
	log.Printf("go-echo listening on %s", *listen)
	log.Fatal(r.Run(*listen))
}
