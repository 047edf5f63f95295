// Command goclient is the README's Go code, compiled and run against a real viam-server by the
// integration tier (tests/integration/test_go_client.py). README.md shows the regions between the
// "README:" markers verbatim; tests/test_examples.py checks that they match.
//
//	VIAM_ADDRESS=127.0.0.1:8080 goclient [flags] top|sort|watch|files|options [FILE...]
//	VIAM_ADDRESS=127.0.0.1:8080 goclient bench FILE   (bench/through_server.py drives it)
package main

import ( // for main only
	"bufio"
	"flag"
)

// README: use-it-from-code
import (
	"context"
	"fmt"
	"os"
	"time"

	"go.viam.com/utils/rpc"

	"go.viam.com/rdk/components/camera"
	"go.viam.com/rdk/data"
	"go.viam.com/rdk/logging"
	"go.viam.com/rdk/robot/client"
	"go.viam.com/rdk/services/vision"
	"go.viam.com/rdk/vision/classification"
)

// connect dials the machine at VIAM_ADDRESS with the API key in VIAM_API_KEY_ID and VIAM_API_KEY
// (the app's CONNECT tab shows them), or, with no key set, a local viam-server without TLS.
func connect(ctx context.Context, logger logging.Logger) (*client.RobotClient, error) {
	address := os.Getenv("VIAM_ADDRESS")
	if os.Getenv("VIAM_API_KEY") == "" {
		return client.New(ctx, address, logger, client.WithDialOptions(rpc.WithInsecure(), rpc.WithForceDirectGRPC()))
	}
	return client.New(ctx, address, logger, client.WithDialOptions(rpc.WithEntityCredentials(
		os.Getenv("VIAM_API_KEY_ID"),
		rpc.Credentials{Type: rpc.CredentialsTypeAPIKey, Payload: os.Getenv("VIAM_API_KEY")},
	)))
}

// printTopClasses prints the top three classes of the camera's next frame.
func printTopClasses(ctx context.Context, classifier vision.Service, cameraName string) error {
	results, err := classifier.ClassificationsFromCamera(ctx, cameraName, 3, nil)
	if err != nil {
		return err
	}
	for _, c := range results {
		fmt.Printf("%s: %.4f\n", c.Label(), c.Score())
	}
	return nil
}

// README: end

// README: examples
// sortPart acts on the top label only above a cut-off; anything else goes to inspection.
func sortPart(ctx context.Context, classifier vision.Service, cameraName string, minConfidence float64, good string) (string, error) {
	results, err := classifier.ClassificationsFromCamera(ctx, cameraName, 1, nil)
	if err != nil {
		return "", err
	}
	if len(results) == 0 {
		return "unsure (nothing): send the part to inspection", nil
	}
	label, score := results[0].Label(), results[0].Score()
	switch {
	case score < minConfidence:
		return fmt.Sprintf("unsure (%s at %.2f): send the part to inspection", label, score), nil
	case label == good:
		return fmt.Sprintf("%s (%.2f): pass the part on", label, score), nil
	default:
		return fmt.Sprintf("%s (%.2f): send the part to inspection", label, score), nil
	}
}

// watchScene prints a line only when the top label changes (configure the service's
// smoothing_window and label_hold_frames to remove the flicker) and keeps watching through camera
// errors; frames <= 0 watches forever.
func watchScene(ctx context.Context, classifier vision.Service, cameraName string, interval time.Duration, frames int) {
	current := ""
	for seen := 0; frames <= 0 || seen < frames; seen++ {
		if seen > 0 {
			time.Sleep(interval)
		}
		results, err := classifier.ClassificationsFromCamera(ctx, cameraName, 1, nil)
		if err != nil { // a camera that is unplugged or hangs: say so and keep watching
			fmt.Printf("%s %v\n", time.Now().Format("15:04:05"), err)
			continue
		}
		label, confidence := "nothing above the threshold", ""
		if len(results) > 0 {
			label, confidence = results[0].Label(), fmt.Sprintf(" (%.2f)", results[0].Score())
		}
		if label != current {
			fmt.Printf("%s scene: %s%s\n", time.Now().Format("15:04:05"), label, confidence)
			current = label
		}
	}
}

// classifyFiles classifies saved images and prints CSV rows (path, rank, label, confidence); it
// returns how many files could not be classified.
func classifyFiles(ctx context.Context, classifier vision.Service, paths []string, count int) int {
	fmt.Println("path,rank,label,confidence")
	failed := 0
	for _, path := range paths {
		results, err := classifyFile(ctx, classifier, path, count)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed++
			continue
		}
		for rank, c := range results {
			fmt.Printf("%s,%d,%s,%.4f\n", path, rank+1, c.Label(), c.Score())
		}
	}
	return failed
}

// classifyFile sends a file's own bytes; the MIME type ("") is read from them.
func classifyFile(ctx context.Context, classifier vision.Service, path string, count int) (classification.Classifications, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	img, err := camera.NamedImageFromBytes(raw, path, "", data.Annotations{})
	if err != nil {
		return nil, err
	}
	return classifier.Classifications(ctx, &img, count, nil)
}

// callOptions asks for one frame's own result without touching the smoothing state, for the left
// half of the frame only, and for the service's stats.
func callOptions(ctx context.Context, classifier vision.Service, cameraName string) error {
	raw, err := classifier.ClassificationsFromCamera(ctx, cameraName, 1, map[string]interface{}{"smoothing": false})
	if err != nil {
		return err
	}
	left, err := classifier.ClassificationsFromCamera(ctx, cameraName, 1, map[string]interface{}{"region": []float64{0, 0, 0.5, 1}})
	if err != nil {
		return err
	}
	stats, err := classifier.DoCommand(ctx, map[string]interface{}{"command": "stats"})
	if err != nil {
		return err
	}
	fmt.Printf("this frame: %s (%.4f)\n", raw[0].Label(), raw[0].Score())
	fmt.Printf("left half: %s (%.4f)\n", left[0].Label(), left[0].Score())
	fmt.Printf("calls: %v\n", stats["calls"])
	return nil
}

// README: end

// benchClassifications times one Classifications call of the file's image for each line read from
// stdin and prints its milliseconds, so that bench/through_server.py can interleave it with its
// other measurements.
func benchClassifications(ctx context.Context, classifier vision.Service, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	img, err := camera.NamedImageFromBytes(raw, path, "", data.Annotations{})
	if err != nil {
		return err
	}
	requests := bufio.NewScanner(os.Stdin)
	for requests.Scan() {
		started := time.Now()
		if _, err := classifier.Classifications(ctx, &img, 5, nil); err != nil {
			return err
		}
		fmt.Printf("%.3f\n", float64(time.Since(started).Microseconds())/1000)
	}
	return requests.Err()
}

func main() {
	serviceName := flag.String("service", "classifier", "the vision service")
	cameraName := flag.String("camera", "cam", "the camera")
	minConfidence := flag.Float64("min-confidence", 0.8, "sort: the cut-off")
	good := flag.String("good", "good", "sort: the label of a part that passes")
	frames := flag.Int("frames", 0, "watch: how many frames (0: forever)")
	interval := flag.Duration("interval", 500*time.Millisecond, "watch: time between frames")
	count := flag.Int("count", 3, "files: results per file")
	flag.Parse()

	ctx := context.Background()
	logger := logging.NewBlankLogger("client")
	logger.AddAppender(logging.NewStderrAppender()) // stdout is for the results
	logger.SetLevel(logging.WARN)
	machine, err := connect(ctx, logger)
	if err != nil {
		logger.Fatal(err)
	}
	defer machine.Close(ctx) //nolint:errcheck
	classifier, err := vision.FromProvider(machine, *serviceName)
	if err != nil {
		logger.Fatal(err)
	}

	switch flag.Arg(0) {
	case "top":
		err = printTopClasses(ctx, classifier, *cameraName)
	case "sort":
		var decision string
		if decision, err = sortPart(ctx, classifier, *cameraName, *minConfidence, *good); err == nil {
			fmt.Println(decision)
		}
	case "watch":
		watchScene(ctx, classifier, *cameraName, *interval, *frames)
	case "files":
		if failed := classifyFiles(ctx, classifier, flag.Args()[1:], *count); failed > 0 {
			err = fmt.Errorf("%d of %d files failed", failed, flag.NArg()-1)
		}
	case "options":
		err = callOptions(ctx, classifier, *cameraName)
	case "bench":
		err = benchClassifications(ctx, classifier, flag.Arg(1))
	default:
		err = fmt.Errorf("unknown command %q: one of top, sort, watch, files, options, bench", flag.Arg(0))
	}
	if err != nil {
		logger.Fatal(err)
	}
}
