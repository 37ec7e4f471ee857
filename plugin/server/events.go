package server

import (
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 16 << 10,
	// The review page asks for wsProtocol (and may offer its token as
	// another subprotocol, see subprotocolToken); the answer names only
	// wsProtocol, never the token.
	Subprotocols: []string{wsProtocol},
	// The daemon listens locally for the node pack and pipelines; browsers
	// of other origins are refused unless the origin is the daemon itself.
	CheckOrigin: func(r *http.Request) bool {
		o := r.Header.Get("Origin")
		return o == "" || o == "http://"+r.Host || o == "https://"+r.Host
	},
}

const (
	writeWait  = 10 * time.Second
	pingPeriod = 30 * time.Second
)

// events upgrades to a websocket and pushes Events: first the current
// model-process state, then every state change and score result. A
// subscriber that falls 64 events behind is disconnected.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	if sw, ok := w.(*statusWriter); ok {
		w = sw.ResponseWriter
		sw.code = http.StatusSwitchingProtocols
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	defer conn.Close()
	ch, ok := s.hub.subscribe()
	if !ok {
		conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "server closing"), time.Now().Add(writeWait))
		return
	}
	defer s.hub.unsubscribe(ch)

	// Reader: answers pings and notices the client leaving.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()

	conn.SetWriteDeadline(time.Now().Add(writeWait))
	if err := conn.WriteJSON(Event{Type: "state", Data: StateEvent{State: string(s.cfg.Scorer.State())}}); err != nil {
		return
	}
	ping := time.NewTicker(pingPeriod)
	defer ping.Stop()
	for {
		select {
		case ev, ok := <-ch:
			conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "closing"))
				return
			}
			if err := conn.WriteJSON(ev); err != nil {
				return
			}
		case <-ping.C:
			conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		case <-gone:
			return
		case <-r.Context().Done():
			return
		}
	}
}
