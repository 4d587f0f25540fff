"""Live and file sensor drivers: OpenCV cameras (video files, V4L2, GStreamer) and ultrasonic echoes over CAN."""
