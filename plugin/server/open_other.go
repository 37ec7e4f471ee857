//go:build !unix

package server

import (
	"errors"
	"os"
)

// openNoFollow refuses: reading request paths needs O_NOFOLLOW and
// O_NONBLOCK, which only unix systems have.
func openNoFollow(p string) (*os.File, error) {
	return nil, errors.New("image paths are only supported on unix systems")
}
