"""Training data from video and screenshots: video reading (decord), Set-of-Mark drawing,
Trace-of-Mark extraction (tracking, camera-motion removal, clustering), WebDataset shard writing
and sharded, resumable corpus jobs. Not built yet (issue [3/7])."""
