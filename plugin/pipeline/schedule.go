package pipeline

import (
	"context"
	"sync"
)

// job is one wanted image: its number (1-based) and the tries it used.
type job struct {
	index int // 1-based
	tries int
}

// scheduler hands out jobs to the workers of every server. A job given
// back (its server died) goes to whichever worker asks next; workers wait
// while other jobs are in progress, since those may come back.
type scheduler struct {
	mu      sync.Mutex
	cond    *sync.Cond
	pending []*job
	active  int
	ctx     context.Context
	full    func() bool // no job needed any more
}

// newScheduler queues count jobs numbered from first.
func newScheduler(ctx context.Context, first, count int, full func() bool) *scheduler {
	s := &scheduler{ctx: ctx, full: full}
	s.cond = sync.NewCond(&s.mu)
	for i := 0; i < count; i++ {
		s.pending = append(s.pending, &job{index: first + i})
	}
	go func() {
		<-ctx.Done()
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
	return s
}

// next returns a job to work on, or nil when none is left (or the run
// ended).
func (s *scheduler) next() *job {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.pending) == 0 && s.active > 0 && s.ctx.Err() == nil {
		s.cond.Wait()
	}
	if len(s.pending) == 0 || s.ctx.Err() != nil || s.full() {
		return nil
	}
	j := s.pending[0]
	s.pending = s.pending[1:]
	s.active++
	return j
}

// done ends work on a job, giving it back when requeue is set.
func (s *scheduler) done(j *job, requeue bool) {
	s.mu.Lock()
	s.active--
	if requeue {
		s.pending = append([]*job{j}, s.pending...)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

// left counts jobs never finished.
func (s *scheduler) left() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}
