package server

import (
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"github.com/m3gate/m3gate/schemas/api"
)

// upgrader accepts a websocket from clients without Origin (not a
// browser page), from the daemon's own origin and from
// Config.AllowedOrigins; the Host check and token ran before (guard).
// The review page asks for wsProtocol (and may offer its token as
// another subprotocol, see subprotocolToken); the answer names only
// wsProtocol, never the token.
func (s *Server) upgrader() *websocket.Upgrader {
	return &websocket.Upgrader{
		ReadBufferSize:  1024,
		WriteBufferSize: 16 << 10,
		Subprotocols:    []string{wsProtocol},
		CheckOrigin: func(r *http.Request) bool {
			o := r.Header.Get("Origin")
			return o == "" || s.originAllowed(o, r.Host)
		},
	}
}

const (
	writeWait  = 10 * time.Second
	pingPeriod = 30 * time.Second
)

// events upgrades to a websocket and pushes Events: first the current
// model-process state, then every state change and score result. A
// subscriber that falls 64 events behind is disconnected.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	if s.hub.count() >= s.cfg.MaxSubscribers {
		s.metrics.refused.WithLabelValues("subscribers").Inc()
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("%d event subscribers already connected (daemon.max_subscribers)", s.cfg.MaxSubscribers))
		return
	}
	if sw, ok := w.(*statusWriter); ok {
		w = sw.ResponseWriter
		sw.code, sw.wrote = http.StatusSwitchingProtocols, true
	}
	conn, err := s.upgrader().Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	defer conn.Close()
	conn.SetReadLimit(4 << 10) // clients send nothing but control frames
	ch, ok := s.hub.subscribe()
	if !ok {
		conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseTryAgainLater, "server closing or full"), time.Now().Add(writeWait))
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
	if err := conn.WriteJSON(api.Event{Type: api.EventState, Data: api.StateEvent{State: string(s.cfg.Scorer.State())}}); err != nil {
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
