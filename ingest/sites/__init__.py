"""Site policy: what a site's answers mean (`errors`: the failure taxonomy, read from yt-dlp's
final error and the warnings before it), how hard to knock (`throttle`: the per-site governor)
and how yt-dlp is asked (`ytdlp_options`). The download stage and discovery use it; it stands
on infrastructure and imports neither stages nor orchestration."""
