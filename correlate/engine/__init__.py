"""The engine: many event streams merged into one ordered stream (merge), the shared Gluster
state and the detectors fed from it (detector_runner, with the user's policy in
finding_policy), and the outputs the findings and events go to (pipeline). It reads sources
and feeds outputs; it never imports the command line."""
