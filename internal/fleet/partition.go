package fleet

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/bpfstats/tracker/internal/publish"
)

// PartitionedToken is the subject token under which a partitioned cluster
// delivers summaries: its subject mapping (deploy/nats/partitions.conf)
// turns <prefix>.<node>._summary into
// <prefix>.partitioned.<p>.<node>._summary, p = Partition(node, N).
const PartitionedToken = "partitioned"

// FleetToken is the subject token of the aggregators' rollups:
// <prefix>._fleet.<partition>.
const FleetToken = "_fleet"

// Partition is the partition, of n, that the cluster's mapping
// {{partition(n,1)}} gives a node token: FNV-1a (32 bits) of the token,
// modulo n, as nats-server computes it.
func Partition(nodeToken string, n int) int {
	if n <= 0 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(nodeToken)) //nolint:errcheck // hashes do not fail
	return int(h.Sum32() % uint32(n))
}

// ParsePartition parses "i/N": partition i of N, 0 <= i < N.
func ParsePartition(s string) (i, n int, err error) {
	a, b, ok := strings.Cut(s, "/")
	if ok {
		i, err = strconv.Atoi(a)
		if err == nil {
			n, err = strconv.Atoi(b)
		}
	}
	if !ok || err != nil || n < 1 || n > MaxPartitions || i < 0 || i >= n {
		return 0, 0, fmt.Errorf("partition %.40q: want i/N with 0 <= i < N <= %d", s, MaxPartitions)
	}
	return i, n, nil
}

// MaxPartitions caps N in a partition i/N.
const MaxPartitions = 1024

// summarySubjects are the subjects of every node's summary: as the
// trackers publish them, and as a partitioned cluster delivers them.
func summarySubjects(prefix string) []string {
	return []string{
		prefix + ".*." + publish.TokenSummary,
		prefix + "." + PartitionedToken + ".*.*." + publish.TokenSummary,
	}
}

// partitionSubject is the subject of partition i's summaries.
func partitionSubject(prefix string, i int) string {
	return fmt.Sprintf("%s.%s.%d.*.%s", prefix, PartitionedToken, i, publish.TokenSummary)
}

// rollupSubject is the subject of partition i's rollups.
func rollupSubject(prefix string, i int) string {
	return fmt.Sprintf("%s.%s.%d", prefix, FleetToken, i)
}

// partitionedNode returns the node token of a partitioned summary subject
// <prefix>.partitioned.<p>.<node>._summary.
func partitionedNode(prefix, subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, prefix+"."+PartitionedToken+".")
	if !ok {
		return "", false
	}
	toks := strings.Split(rest, ".")
	if len(toks) != 3 {
		return "", false
	}
	return toks[1], true
}
